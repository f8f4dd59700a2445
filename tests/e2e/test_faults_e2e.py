"""Faults end to end (issue 8): real `booking serve` processes while PostgreSQL or Redis goes away, and
SIGTERM in the middle of load. PostgreSQL and Redis that get stopped or hung are private servers this
file starts (tests/faults.py); the machine's shared servers are only ever used, never touched.

Measured figures are printed (run with `-s` to see them) and recorded in docs/FAULTS.md.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from storage import migrate
from tests.faults import (
    PASSWORD,
    Answer,
    PrivatePostgres,
    call,
    private_postgres,
    register,
)
from tests.private_redis import REDIS_SERVER, PrivateRedis
from tests.processes import WebProcess, listeners, output, start_web, stop, web_env
from tests.support import wait_for
from tests.ws_support import ask, booking_data, close_code, next_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# SPEC §5/§6: a dependency that is down is a 503 answered promptly, not a hang. 1 s is the contract;
# the assertion leaves room for a loaded shared CI machine, the printed figure is the measurement.
PROMPT = 1.5
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="needs a redis-server binary")


def report(label: str, answer: Answer) -> None:
    print(f"{label}: HTTP {answer.status} in {answer.seconds * 1000:.0f} ms")  # noqa: T201


def assert_unavailable(answer: Answer) -> None:
    assert answer.status == 503, answer
    assert answer.content_type == "application/problem+json", answer
    assert answer.body["status"] == 503
    assert answer.seconds < PROMPT, answer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        migrate.upgrade(server.url)
        yield server


@pytest.fixture
def web_procs() -> Iterator[list[list[WebProcess]]]:
    """Whatever a test starts is stopped (and must exit 0) at the end."""
    started: list[list[WebProcess]] = []
    yield started
    for procs in started:
        exits = stop(procs)
        assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]


def ws_url(web: WebProcess, token: str) -> str:
    return web.base_url.replace("http://", "ws://") + f"/ws/?token={token}"


_slots = itertools.count()


def slot() -> dict[str, Any]:
    """A booking in a slot of its own, so nothing here conflicts."""
    return booking_data(hours=24 + 2 * next(_slots), title=f"fault {uuid.uuid4().hex[:8]}")


# --- PostgreSQL ----------------------------------------------------------------------------------------


async def test_postgres_stopped_answers_503_promptly_and_recovers_without_a_restart(
    postgres: PrivatePostgres,
    redis_url: str,
    http: aiohttp.ClientSession,
    web_procs: list[list[WebProcess]],
) -> None:
    prefix = f"fault{uuid.uuid4().hex[:8]}:"
    (web,) = await asyncio.to_thread(start_web, 1, web_env(postgres.url, redis_url, prefix))
    web_procs.append([web])
    api = f"{web.base_url}/api"
    session = await register(http, web.base_url)
    token = session["accessToken"]
    assert (await call(http, "POST", f"{api}/booking", token=token, json=slot())).status == 201
    socket = await http.ws_connect(ws_url(web, token))
    await ask(socket, "ping")

    await asyncio.to_thread(postgres.stop)
    login = {"email": session["user"]["email"], "password": PASSWORD}
    answers = {
        "login": await call(http, "POST", f"{api}/auth/login", json=login),
        "create": await call(http, "POST", f"{api}/booking", token=token, json=slot()),
        "list": await call(http, "GET", f"{api}/booking", token=token),
        "register": await call(
            http,
            "POST",
            f"{api}/auth/register",
            json={"email": f"x{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "name": "X"},
        ),
    }
    for label, answer in answers.items():
        report(f"PostgreSQL stopped, {label}", answer)
        assert_unavailable(answer)
    health = await call(http, "GET", f"{web.base_url}/health")
    report("PostgreSQL stopped, /health", health)
    assert health.status == 503
    assert health.body["checks"]["database"] != "ok"
    assert health.body["checks"]["redis"] == "ok"
    assert health.seconds < PROMPT
    # The socket stays open; a command on it is answered with a 503 error frame.
    refused = await ask(socket, "create-booking", slot(), id="down")
    assert (refused["event"], refused["data"]["status"]) == ("error", 503)

    await asyncio.to_thread(postgres.start)
    started = time.monotonic()

    async def logs_in() -> bool:
        return (await call(http, "POST", f"{api}/auth/login", json=login)).status == 200

    await wait_for(logs_in, within=15, interval=0.1, what="login to work again once PostgreSQL is back")
    print(f"PostgreSQL back: login works again after {time.monotonic() - started:.2f}s")  # noqa: T201
    assert (await call(http, "POST", f"{api}/booking", token=token, json=slot())).status == 201
    assert (await call(http, "GET", f"{web.base_url}/health")).status == 200
    created = await ask(socket, "create-booking", slot(), id="up")
    assert created["event"] == "create-booking", created
    await socket.close()


async def test_postgres_hanging_health_answers_within_a_second_and_names_it(
    postgres: PrivatePostgres,
    redis_url: str,
    http: aiohttp.ClientSession,
    web_procs: list[list[WebProcess]],
) -> None:
    """Every PostgreSQL process frozen (SIGSTOP): connects and queries stall without an error."""
    prefix = f"fault{uuid.uuid4().hex[:8]}:"
    # The pool's timeout is not what bounds /health (before the fix it answered after 0.4 s + this).
    (web,) = await asyncio.to_thread(start_web, 1, web_env(postgres.url, redis_url, prefix, DB_TIMEOUT="3"))
    web_procs.append([web])
    session = await register(http, web.base_url)
    postgres.hang()
    try:
        health = await call(http, "GET", f"{web.base_url}/health")
        report("PostgreSQL hung, /health", health)
        assert health.status == 503
        assert health.body["checks"] == {"database": "timeout", "redis": "ok"}
        assert health.seconds < PROMPT
        listed = await call(http, "GET", f"{web.base_url}/api/booking", token=session["accessToken"])
        report("PostgreSQL hung (DB_TIMEOUT=3), list", listed)
        assert listed.status == 503, listed
        assert listed.seconds < 2 * 3 + 1  # the pool's acquire and command timeouts bound a request
    finally:
        postgres.resume()

    async def healthy() -> bool:
        return (await call(http, "GET", f"{web.base_url}/health")).status == 200

    await wait_for(healthy, within=15, interval=0.1, what="/health 200 after PostgreSQL resumed")


# --- Redis -----------------------------------------------------------------------------------------------


async def _row_exists(database_url: str, booking_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM bookings WHERE id = $1", uuid.UUID(booking_id)))
    finally:
        await conn.close()


async def _frame_for(
    socket: aiohttp.ClientWebSocketResponse, event: str, booking_id: str, *, within: float = 5.0
) -> bool:
    """Read pushed frames until `event` for `booking_id` (others may come first); False if it has not
    come within `within` seconds."""
    limit = asyncio.timeout(within)
    try:
        async with limit:
            while True:
                frame = await next_frame(socket, within=None)
                if frame.get("event") == event and frame.get("data", {}).get("id") == booking_id:
                    return True
    except TimeoutError:
        if not limit.expired():
            raise
        return False


def both_listening(redis_url: str, channel: str) -> Callable[[], Awaitable[bool]]:
    """A wait_for predicate: two processes' bus listeners subscribed to `channel` (asked off the loop)."""

    async def two() -> bool:
        return await asyncio.to_thread(listeners, redis_url, channel) == 2

    return two


async def _pair_with_a_socket_on_b(
    database_url: str,
    private_redis: PrivateRedis,
    http: aiohttp.ClientSession,
    web_procs: list[list[WebProcess]],
    **env: str,
) -> tuple[WebProcess, WebProcess, str, dict[str, Any], aiohttp.ClientWebSocketResponse]:
    """Two web processes on the private Redis, both listening; a user registered on A with a socket on
    B. Returns (a, b, events channel, session, socket on B)."""
    prefix = f"fault{uuid.uuid4().hex[:8]}:"
    a, b = await asyncio.to_thread(start_web, 2, web_env(database_url, private_redis.url, prefix, **env))
    web_procs.append([a, b])
    channel = f"{prefix}events"
    await wait_for(both_listening(private_redis.url, channel), within=15, what="2 listeners")
    session = await register(http, a.base_url)
    on_b = await http.ws_connect(ws_url(b, session["accessToken"]))
    await ask(on_b, "ping")
    return a, b, channel, session, on_b


@needs_redis_server
async def test_redis_down_bookings_commit_promptly_and_events_cross_again_once_it_is_back(
    database_url: str,
    private_redis: PrivateRedis,
    http: aiohttp.ClientSession,
    web_procs: list[list[WebProcess]],
) -> None:
    a, b, channel, session, on_b = await _pair_with_a_socket_on_b(
        database_url, private_redis, http, web_procs, AUTH_RATE_LIMIT_PER_EMAIL="5"
    )
    token = session["accessToken"]

    await asyncio.to_thread(private_redis.stop)
    for n in range(3):  # the first pays for finding Redis gone; the rest skip it
        created = await call(http, "POST", f"{a.base_url}/api/booking", token=token, json=slot())
        report(f"Redis stopped, create #{n + 1}", created)
        assert created.status == 201, created
        assert created.seconds < PROMPT
        assert await _row_exists(database_url, created.body["id"])
    listed = await call(http, "GET", f"{a.base_url}/api/booking", token=token)
    assert listed.status == 200, listed
    login = {"email": session["user"]["email"], "password": PASSWORD}
    logged_in = await call(http, "POST", f"{a.base_url}/api/auth/login", json=login)
    report("Redis stopped, login", logged_in)
    assert logged_in.status == 200, logged_in
    # Login limits fall back to a per-process count: brute force is still refused.
    wrong = {"email": session["user"]["email"], "password": "wrong password!"}
    statuses = [
        (await call(http, "POST", f"{a.base_url}/api/auth/login", json=wrong)).status for _ in range(6)
    ]
    assert statuses[-1] == 429, statuses
    assert 500 not in statuses and 503 not in statuses, statuses
    health = await call(http, "GET", f"{a.base_url}/health")
    assert health.status == 503
    assert health.body["checks"]["database"] == "ok"
    assert health.body["checks"]["redis"] != "ok"
    # Sockets stay open, their metered commands pass the (open) per-user limit, and they still get the
    # events of their own process (B's actor delivers them).
    assert (await ask(on_b, "ping", id="still-open"))["event"] == "pong"
    by_socket = await ask(on_b, "create-booking", slot(), id="while-down")
    assert by_socket["event"] == "create-booking", by_socket
    local = await call(http, "POST", f"{b.base_url}/api/booking", token=token, json=slot())
    assert local.status == 201, local
    assert await _frame_for(on_b, "booking.created", local.body["id"])

    await asyncio.to_thread(private_redis.start)  # empty, like a restarted Redis without persistence
    started = time.monotonic()
    await wait_for(
        both_listening(private_redis.url, channel),
        within=10,
        what="both event-bus listeners to subscribe again",
    )
    print(f"Redis back: both listeners subscribed after {time.monotonic() - started:.2f}s")  # noqa: T201
    # A's listener subscribing again tells A's gate Redis is back: the very next event crosses.
    crossed = await call(http, "POST", f"{a.base_url}/api/booking", token=token, json=slot())
    assert crossed.status == 201, crossed
    assert await _frame_for(on_b, "booking.created", crossed.body["id"])
    await on_b.close()


@needs_redis_server
async def test_redis_hanging_does_not_hang_requests(
    database_url: str,
    private_redis: PrivateRedis,
    http: aiohttp.ClientSession,
    web_procs: list[list[WebProcess]],
) -> None:
    """Redis frozen (SIGSTOP): connects complete, nothing answers. Requests must not wait for it."""
    a, b, _, session, on_b = await _pair_with_a_socket_on_b(database_url, private_redis, http, web_procs)
    token = session["accessToken"]

    private_redis.hang()
    try:
        for n in range(3):
            created = await call(http, "POST", f"{a.base_url}/api/booking", token=token, json=slot())
            report(f"Redis hung, create #{n + 1}", created)
            assert created.status == 201, created
            assert created.seconds < PROMPT
            assert await _row_exists(database_url, created.body["id"])
        login = {"email": session["user"]["email"], "password": PASSWORD}
        logged_in = await call(http, "POST", f"{b.base_url}/api/auth/login", json=login)
        report("Redis hung, login", logged_in)
        assert logged_in.status == 200, logged_in
        assert logged_in.seconds < PROMPT
        health = await call(http, "GET", f"{a.base_url}/health")
        report("Redis hung, /health", health)
        assert health.status == 503
        assert health.body["checks"] == {"database": "ok", "redis": "timeout"}
        assert health.seconds < PROMPT
        pong = await ask(on_b, "ping", id="still-open")
        assert pong["event"] == "pong"
    finally:
        private_redis.resume()

    # A frozen-then-thawed Redis never dropped the subscriptions; A's gate closes at its next probe
    # (at most REDIS_SKIP_SECONDS after the last failure), so an event may still be skipped until then.
    resumed = time.monotonic()

    async def crosses() -> bool:
        created = await call(http, "POST", f"{a.base_url}/api/booking", token=token, json=slot())
        assert created.status == 201, created
        return await _frame_for(on_b, "booking.created", created.body["id"], within=1.0)

    await wait_for(crosses, within=20, interval=0.1, what="an event from A to reach B again")
    print(f"Redis thawed: events cross again after {time.monotonic() - resumed:.2f}s")  # noqa: T201
    await on_b.close()


async def _async(value: bool) -> bool:
    return value


# --- SIGTERM during load ---------------------------------------------------------------------------------


async def test_sigterm_under_load_finishes_in_flight_requests_and_loses_nothing(
    database_url: str, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """16 clients create bookings (each with a unique title and Idempotency-Key) on one real process;
    SIGTERM lands mid-load. Every 201 is in PostgreSQL, nothing is stored that was not acknowledged,
    every 201 the server logged reached its client, the socket is closed 1001, the exit is 0."""
    prefix = f"fault{uuid.uuid4().hex[:8]}:"
    procs = await asyncio.to_thread(start_web, 1, web_env(database_url, redis_url, prefix, LOG_LEVEL="INFO"))
    (web,) = procs
    try:
        users = [await register(http, web.base_url) for _ in range(16)]
        socket = await http.ws_connect(ws_url(web, users[0]["accessToken"]))
        await ask(socket, "ping")
        run = uuid.uuid4().hex[:8]
        outcomes: dict[str, tuple[int | str, float, float]] = {}  # title -> (status | error, sent, done)
        acked = 0

        async def client(n: int, user: dict[str, Any]) -> None:
            nonlocal acked
            # A session per client, as separate callers would have; keep-alive on, like real clients.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as own:
                for i in itertools.count():
                    title = f"sigterm {run} {n} {i}"
                    body = booking_data(hours=24 + i, title=title)
                    key = {"Idempotency-Key": f"{run}-{n}-{i}"}
                    sent = time.monotonic()
                    try:
                        answer = await call(
                            own,
                            "POST",
                            f"{web.base_url}/api/booking",
                            token=user["accessToken"],
                            json=body,
                            headers=key,
                        )
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcomes[title] = (type(exc).__name__, sent, time.monotonic())
                        return  # the server is gone for this client
                    outcomes[title] = (answer.status, sent, time.monotonic())
                    if answer.status == 201:
                        acked += 1
                    elif web.process.poll() is not None:
                        return

        clients = [asyncio.create_task(client(n, u)) for n, u in enumerate(users)]
        await wait_for(lambda: _async(acked >= 60), within=30, what="60 creates acknowledged")
        signalled = time.monotonic()
        web.process.terminate()
        code = await close_code(socket, within=10)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
        exit_code = await asyncio.to_thread(web.process.wait, 15)
        exited = time.monotonic() - signalled
        log = output(web.process, limit=10**8)
    finally:
        exits = await asyncio.to_thread(stop, procs)

    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetch("SELECT title FROM bookings WHERE title LIKE $1", f"sigterm {run} %")
    finally:
        await conn.close()
    rows = {r["title"] for r in found}
    ok = {title for title, (status, _, _) in outcomes.items() if status == 201}
    other = {title: status for title, (status, _, _) in outcomes.items() if status != 201}
    in_flight = [status for status, sent, done in outcomes.values() if sent < signalled < done]
    logged_201 = sum(1 for line in log.splitlines() if "POST /api/booking 201" in line)
    print(  # noqa: T201
        f"SIGTERM under load: {len(ok)} acknowledged ({logged_201} logged 201 by the server); "
        f"{len(in_flight)} in flight at the signal -> {dict(Counter(map(str, in_flight)))}; "
        f"not acknowledged: {dict(Counter(map(str, other.values())))}; socket closed {code}; "
        f"exit {exit_code} after {exited:.2f}s"
    )
    assert exit_code == 0, exits[0].output
    assert exited < 12, exits[0].output  # run_app's shutdown_timeout is 10 s
    assert code == 1001
    assert ok <= rows, f"acknowledged but not stored: {sorted(ok - rows)}"
    assert rows <= ok, f"stored without a 2xx: {[(t, other.get(t)) for t in rows - ok]}"
    assert logged_201 == len(ok), "a 201 the server sent never reached its client"
    assert not [s for s in other.values() if isinstance(s, int) and s >= 500 and s != 503], other
