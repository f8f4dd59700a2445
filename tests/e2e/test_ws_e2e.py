"""/ws/ across two real web processes sharing PostgreSQL and Redis: events cross, in order, to the right user.

A socket is opened on process B, the REST calls that cause events go to process A, so every event seen
here travelled A → Redis pub/sub → B.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from actors.hub import make_event
from server.bus.events import RESYNC_MESSAGE, EventBus
from tests.private_redis import PrivateRedis
from tests.processes import (
    BOOKING,
    ROOT,
    WebProcess,
    listeners,
    output,
    start_web,
    stop,
    wait_for_listeners,
    web_env,
)
from tests.support import unique_email, wait_for
from tests.ws_support import ask, booking_data, close_code, events_until_pong, next_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ADMIN_PASSWORD = "admin password e2e"  # a throwaway account in a throwaway database


class Pair:
    def __init__(
        self, a: WebProcess, b: WebProcess, *, prefix: str, redis_url: str, admin_email: str
    ) -> None:
        self.a, self.b = a, b
        self.prefix = prefix
        self.redis_url = redis_url
        self.admin_email = admin_email

    def ws_url(self, web: WebProcess, token: str | None = None) -> str:
        url = web.base_url.replace("http://", "ws://") + "/ws/"
        return f"{url}?token={token}" if token else url


@pytest.fixture(scope="module")
def pair(database_url: str, redis_url: str) -> Iterator[Pair]:
    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    admin_email = unique_email("admin")
    env = web_env(database_url, redis_url, prefix, WS_AUTH_TIMEOUT="1")
    # The documented path to the first admin, before the servers start.
    subprocess.run(
        [str(BOOKING), "create-admin", "--email", admin_email],
        cwd=ROOT,
        env={**os.environ, **env, "ADMIN_PASSWORD": ADMIN_PASSWORD},
        check=True,
        capture_output=True,
        timeout=60,
    )
    procs = start_web(2, env)
    try:
        wait_for_listeners(redis_url, f"{prefix}events", 2)
        yield Pair(procs[0], procs[1], prefix=prefix, redis_url=redis_url, admin_email=admin_email)
    finally:
        exits = stop(procs)
        assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def register(http: aiohttp.ClientSession, web: WebProcess) -> dict[str, Any]:
    body = {"email": unique_email(), "password": "correct horse battery", "name": "E2E"}
    async with http.post(f"{web.base_url}/api/auth/register", json=body) as resp:
        assert resp.status == 201, await resp.text()
        session: dict[str, Any] = await resp.json()
        return session


async def login_admin(http: aiohttp.ClientSession, pair: Pair) -> dict[str, Any]:
    body = {"email": pair.admin_email, "password": ADMIN_PASSWORD}
    async with http.post(f"{pair.a.base_url}/api/auth/login", json=body) as resp:
        assert resp.status == 200, await resp.text()
        session: dict[str, Any] = await resp.json()
        return session


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['accessToken']}"}


async def test_events_cross_processes_in_order_and_reach_only_their_user(
    pair: Pair, http: aiohttp.ClientSession
) -> None:
    alice, bob = await register(http, pair.a), await register(http, pair.a)
    alice_ws = await http.ws_connect(pair.ws_url(pair.b, alice["accessToken"]))
    bob_on_a = await http.ws_connect(pair.ws_url(pair.a, bob["accessToken"]))
    bob_on_b = await http.ws_connect(pair.ws_url(pair.b, bob["accessToken"]))
    for ws in (alice_ws, bob_on_a, bob_on_b):
        await ask(ws, "ping")  # authenticated and subscribed before any event is caused

    expected: list[tuple[str, str]] = []
    ids = []
    for n in range(5):
        async with http.post(
            f"{pair.a.base_url}/api/booking", json=booking_data(hours=24 + 2 * n), headers=bearer(alice)
        ) as resp:
            assert resp.status == 201, await resp.text()
            ids.append((await resp.json())["id"])
            expected.append(("booking.created", ids[-1]))
    for title in ("second", "third"):
        async with http.patch(
            f"{pair.a.base_url}/api/booking/{ids[0]}", json={"title": title}, headers=bearer(alice)
        ) as resp:
            assert resp.status == 200
            expected.append(("booking.updated", ids[0]))
    async with http.delete(f"{pair.a.base_url}/api/booking/{ids[1]}", headers=bearer(alice)) as resp:
        assert resp.status == 204
        expected.append(("booking.deleted", ids[1]))

    frames = [await next_frame(alice_ws) for _ in expected]
    assert [(f["event"], f["data"]["id"]) for f in frames] == expected
    assert [f["data"]["title"] for f in frames if f["event"] == "booking.updated"] == ["second", "third"]
    assert all(f["data"]["userId"] == alice["user"]["id"] for f in frames)
    # Alice's last event has reached process B, so anything meant for Bob there would precede his pong.
    assert await events_until_pong(bob_on_b) == []
    assert await events_until_pong(bob_on_a) == []
    assert await events_until_pong(alice_ws) == []
    for ws in (alice_ws, bob_on_a, bob_on_b):
        await ws.close()


async def test_an_unauthenticated_socket_gets_nothing_and_is_closed_4401(
    pair: Pair, http: aiohttp.ClientSession
) -> None:
    user = await register(http, pair.a)
    # The seed's wscat session without a token: the first frame is not `authenticate`.
    ws = await http.ws_connect(pair.ws_url(pair.b))
    await ws.send_json({"event": "join-user-room", "data": {"userId": user["user"]["id"]}})
    assert await close_code(ws) == 4401
    # A silent one is closed after WS_AUTH_TIMEOUT (1 s here), having received nothing.
    silent = await http.ws_connect(pair.ws_url(pair.b))
    started = time.monotonic()
    msg = await silent.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert silent.close_code == 4401
    assert time.monotonic() - started < 4
    forged = await http.ws_connect(pair.ws_url(pair.b, "forged.token.value"))
    assert await close_code(forged) == 4401


async def test_joining_someone_elses_room_is_refused_but_an_admin_may(
    pair: Pair, http: aiohttp.ClientSession
) -> None:
    owner, stranger = await register(http, pair.a), await register(http, pair.a)
    admin = await login_admin(http, pair)
    stranger_ws = await http.ws_connect(pair.ws_url(pair.b, stranger["accessToken"]))
    refused = await ask(stranger_ws, "join-user-room", {"userId": owner["user"]["id"]}, id="j")
    assert refused["event"] == "error"
    assert refused["data"]["status"] == 403
    assert refused["id"] == "j"
    admin_ws = await http.ws_connect(pair.ws_url(pair.b, admin["accessToken"]))
    joined = await ask(admin_ws, "join-user-room", {"userId": owner["user"]["id"]})
    assert joined["event"] == "join-user-room"

    async with http.post(
        f"{pair.a.base_url}/api/booking", json=booking_data(), headers=bearer(owner)
    ) as resp:
        assert resp.status == 201
        booking_id = (await resp.json())["id"]
    frame = await next_frame(admin_ws)
    assert (frame["event"], frame["data"]["id"]) == ("booking.created", booking_id)
    assert await events_until_pong(stranger_ws) == []
    for ws in (stranger_ws, admin_ws):
        await ws.close()


async def test_a_websocket_mutation_on_b_reaches_the_users_socket_on_a(
    pair: Pair, http: aiohttp.ClientSession
) -> None:
    user = await register(http, pair.a)
    on_a = await http.ws_connect(pair.ws_url(pair.a, user["accessToken"]))
    await ask(on_a, "ping")
    on_b = await http.ws_connect(pair.ws_url(pair.b), headers=bearer(user))
    created = await ask(on_b, "create-booking", booking_data(hours=72), id="c")
    assert created["event"] == "create-booking"
    frame = await next_frame(on_a)
    assert frame["event"] == "booking.created"
    assert frame["data"] == created["data"]
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_broadcast_reaches_sockets_on_every_process(pair: Pair, http: aiohttp.ClientSession) -> None:
    user = await register(http, pair.a)
    sockets = [await http.ws_connect(pair.ws_url(web, user["accessToken"])) for web in (pair.a, pair.b)]
    for ws in sockets:
        await ask(ws, "ping")
    # Published the way a worker publishes: a bus with no local registry of its own.
    redis = Redis.from_url(pair.redis_url)
    try:
        bus = EventBus(redis, prefix=pair.prefix)
        await bus.broadcast(make_event("system.notification", {"message": "hello everyone"}))
    finally:
        await redis.aclose()
    for ws in sockets:
        frame = await next_frame(ws)
        assert (frame["event"], frame["data"]) == ("system.notification", {"message": "hello everyone"})
        await ws.close()


async def test_an_admin_broadcast_over_rest_reaches_every_socket_on_both_processes(
    pair: Pair, http: aiohttp.ClientSession
) -> None:
    """Issue 4: POST /api/notifications/broadcast on A; every user's sockets on A and on B get it once."""
    admin = await login_admin(http, pair)
    alice, bob = await register(http, pair.a), await register(http, pair.b)
    sockets = [
        await http.ws_connect(pair.ws_url(pair.a, alice["accessToken"])),
        await http.ws_connect(pair.ws_url(pair.b, alice["accessToken"])),
        await http.ws_connect(pair.ws_url(pair.b, bob["accessToken"])),
        await http.ws_connect(pair.ws_url(pair.b, admin["accessToken"])),
        await http.ws_connect(pair.ws_url(pair.a, bob["accessToken"])),
    ]
    for ws in sockets:
        await ask(ws, "ping")
    # Roomless sockets on both processes: a broadcast is for every open socket, whatever its rooms.
    for ws in (sockets[1], sockets[4]):
        left = await ask(ws, "leave-user-room", {}, id="leave")
        assert left["data"]["rooms"] == [], left
    url = f"{pair.a.base_url}/api/notifications/broadcast"
    async with http.post(url, json={"message": "plain user"}, headers=bearer(alice)) as resp:
        assert resp.status == 403
    async with http.post(url, json={"message": "x" * 1001}, headers=bearer(admin)) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
    body = {"message": "Maintenance at 18:00 UTC", "data": {"window": "18:00-18:15"}}
    started = time.monotonic()
    async with http.post(url, json=body, headers=bearer(admin)) as resp:
        assert resp.status == 202, await resp.text()
        sent = await resp.json()
    for ws in sockets:
        frame = await next_frame(ws)
        assert frame == sent
    print(f"\nbroadcast: 202 to the last socket's frame in {time.monotonic() - started:.3f}s")  # noqa: T201
    for ws in sockets:
        assert await events_until_pong(ws) == []  # once, and nothing from the refused calls
        await ws.close()


async def test_sigterm_closes_open_sockets_with_1001(
    database_url: str, redis_url: str, http: aiohttp.ClientSession
) -> None:
    env = web_env(database_url, redis_url, f"e2e{uuid.uuid4().hex[:10]}:", WS_AUTH_TIMEOUT="1")
    procs = await asyncio.to_thread(start_web, 1, env)
    try:
        web = procs[0]
        user = await register(http, web)
        ws = await http.ws_connect(web.base_url.replace("http://", "ws://") + "/ws/", headers=bearer(user))
        await ask(ws, "ping")
        started = time.monotonic()
        web.process.terminate()
        assert await close_code(ws, within=10) == 1001
        assert time.monotonic() - started < 5
        # Let the graceful shutdown finish; a second signal from stop() would cut it short.
        await asyncio.to_thread(web.process.wait, 15)
    finally:
        exits = await asyncio.to_thread(stop, procs)
    assert exits[0].code == 0, exits[0].output


@pytest.mark.parametrize("how", ["SIGKILL", "SHUTDOWN NOSAVE"])
async def test_subscriptions_recover_after_redis_is_killed_and_restarted(
    database_url: str, private_redis: PrivateRedis, http: aiohttp.ClientSession, how: str
) -> None:
    """Issue 4: Redis dies (SIGKILL, or SHUTDOWN NOSAVE) and comes back empty on the same port; with no
    process restarted, a mutation on A reaches the socket on B again. The socket stays open throughout
    and is told, once B listens again, that events may have been missed (a resync notice) before new
    events."""
    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    channel = f"{prefix}events"
    env = web_env(database_url, private_redis.url, prefix, WS_AUTH_TIMEOUT="1")
    procs = await asyncio.to_thread(start_web, 2, env)
    try:
        a, b = procs
        await asyncio.to_thread(wait_for_listeners, private_redis.url, channel, 2)
        user = await register(http, a)
        ws = await http.ws_connect(b.base_url.replace("http://", "ws://") + "/ws/", headers=bearer(user))
        await ask(ws, "ping")

        await asyncio.to_thread(private_redis.stop if how == "SIGKILL" else private_redis.shutdown)
        down_at = time.monotonic()

        async def both_noticed() -> bool:
            logs = await asyncio.to_thread(lambda: [output(p.process, limit=10**6) for p in procs])
            return all("event listener lost Redis" in log for log in logs)

        # An outage both listeners noticed (each logged losing Redis), not a blip inside one retry.
        await wait_for(both_noticed, within=10, what="both web processes to notice Redis gone")
        await asyncio.to_thread(private_redis.start)
        up_at = time.monotonic()

        async def both_listening() -> bool:
            return await asyncio.to_thread(listeners, private_redis.url, channel) >= 2

        await wait_for(both_listening, within=15, what="both web processes subscribed again")
        resubscribed = time.monotonic() - up_at
        async with http.post(f"{a.base_url}/api/booking", json=booking_data(), headers=bearer(user)) as resp:
            assert resp.status == 201, (await resp.text(), output(a.process))
            booking_id = (await resp.json())["id"]
        frames = []
        while not any(f["event"] == "booking.created" for f in frames):
            frames.append(await next_frame(ws, within=5))
        delivered = time.monotonic() - up_at
        assert frames[0] == {
            "event": "system.notification",
            "data": {"message": RESYNC_MESSAGE, "data": {"reason": "resync"}},
            "timestamp": frames[0]["timestamp"],
        }
        assert [(f["event"], f["data"].get("id")) for f in frames[1:]] == [("booking.created", booking_id)]
        assert not ws.closed
        assert (await ask(ws, "ping", id="after"))["event"] == "pong"
        print(  # noqa: T201
            f"\n{how}: Redis down {up_at - down_at:.2f}s; both listeners back {resubscribed:.2f}s after it "
            f"restarted; first event on B {delivered:.2f}s after; frames on B: {[f['event'] for f in frames]}"
        )
        await ws.close()
    finally:
        exits = await asyncio.to_thread(stop, procs)
    assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]
