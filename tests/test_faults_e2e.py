"""Faults end to end (issue 8): real `booking serve` processes while PostgreSQL or Redis goes away, and
SIGTERM in the middle of load. PostgreSQL and Redis that get stopped or hung are private servers this
file starts (tests/faults.py); the machine's shared servers are only ever used, never touched.

Measured figures are printed (run with `-s` to see them) and recorded in docs/FAULTS.md.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage import migrate
from tests.faults import (
    PASSWORD,
    REDIS_SERVER,
    Answer,
    PrivatePostgres,
    PrivateRedis,
    call,
    private_postgres,
    register,
    web_env,
)
from tests.processes import WebProcess, start_web, stop
from tests.support import wait_for
from tests.ws_support import ask, booking_data

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
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("needs a redis-server binary")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
    (web,) = start_web(1, web_env(postgres.url, redis_url, prefix))
    web_procs.append([web])
    api = f"{web.base_url}/api"
    session = await register(http, web.base_url)
    token = session["accessToken"]
    assert (await call(http, "POST", f"{api}/booking", token=token, json=slot())).status == 201
    socket = await http.ws_connect(ws_url(web, token))
    await ask(socket, "ping")

    postgres.stop()
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

    postgres.start()
    started = time.monotonic()

    async def logs_in() -> bool:
        return (await call(http, "POST", f"{api}/auth/login", json=login)).status == 200

    await wait_for(logs_in, timeout=15, interval=0.1, what="login to work again once PostgreSQL is back")
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
    (web,) = start_web(1, web_env(postgres.url, redis_url, prefix, DB_TIMEOUT="3"))
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

    await wait_for(healthy, timeout=15, interval=0.1, what="/health 200 after PostgreSQL resumed")
