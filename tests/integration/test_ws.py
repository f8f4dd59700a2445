"""/ws/ in-process against real PostgreSQL and Redis: authentication, rooms, commands, hostile clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from actors.hub import make_event
from handlers.ws import close_all
from server.base.settings import Settings, SettingsError
from server.web.keys import BUS, HUB, REGISTRY, WEBSOCKETS
from tests.conftest import Client, Registrar, auth
from tests.support import unique_email, wait_for
from tests.ws_support import ask, booking_data, close_code, events_until_pong, next_frame

MakeClient = Callable[..., Awaitable[Client]]


def token_of(session: dict[str, Any]) -> str:
    token: str = session["accessToken"]
    return token


async def open_ws(client: Client, session: dict[str, Any] | None = None, **kw: Any) -> Any:
    path = f"/ws/?token={token_of(session)}" if session else "/ws/"
    return await client.ws_connect(path, **kw)


# --- settings -----------------------------------------------------------------------------------------


def test_ws_settings_parse_and_origins_default_to_cors() -> None:
    settings = Settings.from_env(
        {"CORS_ORIGINS": "https://a.example, https://b.example", "WS_AUTH_TIMEOUT": "2.5"}
    )
    assert settings.ws_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.ws_auth_timeout == 2.5
    assert settings.ws_max_frame_bytes == 64 * 1024
    explicit = Settings.from_env({"CORS_ORIGINS": "https://a.example", "WS_ALLOWED_ORIGINS": ""})
    assert explicit.ws_allowed_origins == ()
    with pytest.raises(SettingsError, match="WS_MAX_FRAME_BYTES"):
        Settings.from_env({"WS_MAX_FRAME_BYTES": "10"})
    with pytest.raises(SettingsError, match="WS_RATE_PER_SECOND"):
        Settings.from_env({"WS_RATE_PER_SECOND": "0"})


# --- authentication ------------------------------------------------------------------------------------


async def test_query_token_authenticates_and_ping_echoes_the_id(client: Client, register: Registrar) -> None:
    ws = await open_ws(client, await register())
    pong = await ask(ws, "ping", id="p-17")
    assert pong["event"] == "pong"
    assert pong["id"] == "p-17"
    assert pong["data"]["time"].endswith("Z")
    numeric = await ask(ws, "ping", id=42)
    assert numeric["id"] == 42
    await ws.close()


async def test_bearer_header_authenticates(client: Client, register: Registrar) -> None:
    ws = await client.ws_connect("/ws/", headers=auth(await register()))
    assert (await ask(ws, "ping"))["event"] == "pong"
    await ws.close()


async def test_first_frame_authenticates_and_is_answered(client: Client, register: Registrar) -> None:
    user = await register()
    ws = await client.ws_connect("/ws/")
    reply = await ask(ws, "authenticate", {"token": token_of(user)}, id="auth")
    assert reply["event"] == "authenticate"
    assert reply["data"]["user"]["id"] == user["user"]["id"]
    assert (await ask(ws, "ping"))["event"] == "pong"
    again = await ask(ws, "authenticate", {"token": token_of(user)}, id="again")
    assert again["data"]["status"] == 409
    await ws.close()


@pytest.mark.parametrize(
    "how",
    ["query", "header", "frame"],
)
async def test_a_bad_token_closes_4401(client: Client, how: str) -> None:
    if how == "query":
        ws = await client.ws_connect("/ws/?token=not-a-jwt")
    elif how == "header":
        ws = await client.ws_connect("/ws/", headers={"Authorization": "Bearer not-a-jwt"})
    else:
        ws = await client.ws_connect("/ws/")
        await ws.send_json({"event": "authenticate", "data": {"token": "not-a-jwt"}})
    assert await close_code(ws) == 4401


@pytest.mark.parametrize(
    "first",
    [
        {"event": "join-user-room", "data": {"userId": str(uuid.uuid4())}},  # the seed's wscat session
        {"event": "ping"},
        {"event": "authenticate", "data": {}},
        {"event": "authenticate", "data": {"token": 12}},
        {"event": "authenticate", "data": {"token": "a\ud800b"}},  # a lone surrogate: PyJWT cannot encode it
        {"event": "authenticate", "data": {"token": "[" * 30_000 + "]" * 30_000}},
        "[" * 30_000 + "]" * 30_000,
        "not json",
        b"\x00binary",
    ],
)
async def test_anything_but_authenticate_first_closes_4401_without_a_reply(
    client: Client, first: Any
) -> None:
    ws = await client.ws_connect("/ws/")
    if isinstance(first, bytes):
        await ws.send_bytes(first)
    elif isinstance(first, str):
        await ws.send_str(first)
    else:
        await ws.send_json(first)
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE, msg
    assert ws.close_code == 4401


async def test_silence_closes_4401_after_the_auth_timeout(make_client: MakeClient) -> None:
    client = await make_client(ws_auth_timeout=0.5)
    ws = await client.ws_connect("/ws/")
    started = time.monotonic()
    assert await close_code(ws) == 4401
    assert time.monotonic() - started < 3


async def test_a_suspended_user_cannot_connect(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    resp = await client.patch(
        f"/api/users/{user['user']['id']}", json={"status": "suspended"}, headers=auth(admin)
    )
    assert resp.status == 200
    ws = await open_ws(client, user)
    assert await close_code(ws) == 4401


# --- rooms and pushed events ------------------------------------------------------------------------


async def test_own_events_arrive_without_joining_in_order(client: Client, register: Registrar) -> None:
    user = await register()
    ws = await open_ws(client, user)
    await ask(ws, "ping")  # authenticated and subscribed
    created = await (await client.post("/api/booking", json=booking_data(), headers=auth(user))).json()
    patched = await client.patch(f"/api/booking/{created['id']}", json={"title": "x"}, headers=auth(user))
    assert patched.status == 200
    deleted = await client.delete(f"/api/booking/{created['id']}", headers=auth(user))
    assert deleted.status == 204
    frames = [await next_frame(ws) for _ in range(3)]
    assert [f["event"] for f in frames] == ["booking.created", "booking.updated", "booking.deleted"]
    assert frames[0]["data"] == created
    assert frames[1]["data"]["title"] == "x"
    assert frames[2]["data"] == {"id": created["id"], "userId": user["user"]["id"]}
    assert all(f["timestamp"].endswith("Z") and "id" not in f for f in frames)
    await ws.close()


async def test_an_idle_actor_stops_while_its_users_socket_stays_open_and_still_gets_events(
    make_client: MakeClient,
) -> None:
    """Sockets subscribe to the hub, not to the actor: an open socket keeps no idle actor alive, and the
    actor spawned for the next request publishes to the same room."""
    client = await make_client(actor_idle_seconds=0.2)
    registered = await client.post(
        "/api/auth/register", json={"email": unique_email("idle"), "password": "x" * 12, "name": "I"}
    )
    user = await registered.json()
    user_id = uuid.UUID(user["user"]["id"])
    ws = await open_ws(client, user)
    await ask(ws, "ping")  # authenticated and subscribed
    first = await client.post("/api/booking", json=booking_data(hours=60), headers=auth(user))
    assert first.status == 201
    assert (await next_frame(ws))["event"] == "booking.created"
    registry = client.app[REGISTRY]
    assert user_id in registry

    async def actor_stopped() -> bool:
        return user_id not in registry

    await wait_for(actor_stopped, what="the idle actor to stop while its user's socket is open")
    assert not ws.closed and client.app[HUB].subscribers(user_id) == 1
    second = await client.post("/api/booking", json=booking_data(hours=62), headers=auth(user))
    assert second.status == 201
    event = await next_frame(ws)
    assert (event["event"], event["data"]["id"]) == ("booking.created", (await second.json())["id"])
    await ws.close()

    async def left_the_hub() -> bool:
        return client.app[HUB].subscribers(user_id) == 0

    await wait_for(left_the_hub, what="the closed socket to leave the hub")


async def test_another_users_socket_gets_nothing(client: Client, register: Registrar) -> None:
    alice, bob = await register(), await register()
    bob_ws = await open_ws(client, bob)
    await ask(bob_ws, "ping")
    resp = await client.post("/api/booking", json=booking_data(), headers=auth(alice))
    assert resp.status == 201
    # Events are queued before the REST call returns, so anything for Bob would precede his pong.
    assert await events_until_pong(bob_ws) == []
    await bob_ws.close()


async def test_join_own_room_is_accepted_and_another_users_is_refused(
    client: Client, register: Registrar
) -> None:
    alice, bob = await register(), await register()
    ws = await open_ws(client, alice)
    own = await ask(ws, "join-user-room", {"userId": alice["user"]["id"]}, id="own")
    assert own["event"] == "join-user-room"
    assert own["data"]["rooms"] == [alice["user"]["id"]]
    other = await ask(ws, "join-user-room", {"userId": bob["user"]["id"]}, id="other")
    assert other == {
        "event": "error",
        "data": {"status": 403, "message": other["data"]["message"]},
        "id": "other",
    }
    resp = await client.post("/api/booking", json=booking_data(), headers=auth(bob))
    assert resp.status == 201
    assert await events_until_pong(ws) == []
    await ws.close()


async def test_admin_joins_any_room_and_leaves_it(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    ws = await open_ws(client, admin)
    joined = await ask(ws, "join-user-room", {"userId": user["user"]["id"]})
    assert user["user"]["id"] in joined["data"]["rooms"]
    created = await (await client.post("/api/booking", json=booking_data(), headers=auth(user))).json()
    assert [f["event"] for f in await events_until_pong(ws)] == ["booking.created"]
    left = await ask(ws, "leave-user-room", {"userId": user["user"]["id"]}, id="leave")
    assert left["data"]["rooms"] == [admin["user"]["id"]]
    await client.delete(f"/api/booking/{created['id']}", headers=auth(user))
    assert await events_until_pong(ws) == []
    await ws.close()


async def test_a_broadcast_reaches_each_socket_once_whatever_its_rooms(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    admin_ws, user_ws = await open_ws(client, admin), await open_ws(client, user)
    await ask(admin_ws, "join-user-room", {"userId": user["user"]["id"]})
    await ask(user_ws, "ping")
    # A socket that left its own room (no rooms at all) still gets every broadcast.
    roomless = await open_ws(client, user)
    left = await ask(roomless, "leave-user-room", {"userId": user["user"]["id"]})
    assert left["data"]["rooms"] == []
    await client.app[HUB].broadcast(make_event("system.notification", {"message": "maintenance at 6"}))
    for ws in (admin_ws, user_ws, roomless):
        frames = await events_until_pong(ws)
        assert [(f["event"], f["data"]) for f in frames] == [
            ("system.notification", {"message": "maintenance at 6"})
        ]
        await ws.close()


async def test_events_cross_between_two_app_instances_through_redis(
    make_client: MakeClient, register: Registrar
) -> None:
    """Two apps in one loop share Redis (same prefix) but not registries: a stand-in for two processes."""
    rest, sockets = await make_client(), await make_client()
    for app_client in (rest, sockets):
        await asyncio.wait_for(app_client.app[BUS].connected.wait(), 5)
    user = await register()
    ws = await open_ws(sockets, user)
    await ask(ws, "ping")
    resp = await rest.post("/api/booking", json=booking_data(), headers=auth(user))
    assert resp.status == 201
    frame = await next_frame(ws)
    assert frame["event"] == "booking.created"
    assert frame["data"]["id"] == (await resp.json())["id"]
    await ws.close()


# --- booking commands (the REST code path) ------------------------------------------------------------


async def test_booking_commands_share_the_rest_rules(client: Client, register: Registrar) -> None:
    user = await register()
    ws = await open_ws(client, user)
    created = await ask(ws, "create-booking", booking_data(hours=30), id="c")
    assert created["event"] == "create-booking"
    booking = created["data"]
    assert booking["userId"] == user["user"]["id"]
    assert booking["version"] == 1
    rest = await client.get(f"/api/booking/{booking['id']}", headers=auth(user))
    assert await rest.json() == booking

    overlap = await ask(ws, "create-booking", booking_data(hours=30), id="o")
    assert overlap["data"]["status"] == 409
    assert overlap["data"]["conflictingId"] == booking["id"]

    naive = booking_data(hours=50)
    naive["startTime"] = naive["startTime"].rstrip("Z")
    invalid = await ask(ws, "create-booking", naive, id="n")
    assert invalid["data"]["status"] == 400
    assert [e["field"] for e in invalid["data"]["errors"]] == ["startTime"]

    got = await ask(ws, "get-booking", {"id": booking["id"]}, id="g")
    assert got["data"] == booking
    listed = await ask(ws, "get-bookings", {"userId": user["user"]["id"], "limit": 5}, id="l")
    assert listed["data"]["meta"] == {"total": 1, "page": 1, "limit": 5, "totalPages": 1}
    assert [b["id"] for b in listed["data"]["data"]] == [booking["id"]]

    stale = await ask(ws, "update-booking", {"id": booking["id"], "ifMatch": 7, "title": "y"}, id="s")
    assert stale["data"]["status"] == 412
    updated = await ask(ws, "update-booking", {"id": booking["id"], "ifMatch": 1, "title": "y"}, id="u")
    assert updated["data"]["title"] == "y"
    assert updated["data"]["version"] == 2
    nothing = await ask(ws, "update-booking", {"id": booking["id"]}, id="e")
    assert nothing["data"]["status"] == 400

    deleted = await ask(ws, "delete-booking", {"id": booking["id"]}, id="d")
    assert deleted["data"] == {"id": booking["id"]}
    gone = await ask(ws, "get-booking", {"id": booking["id"]}, id="gone")
    assert gone["data"]["status"] == 404
    await ws.close()


async def test_a_mutations_own_event_arrives_just_before_its_reply(
    client: Client, register: Registrar
) -> None:
    ws = await open_ws(client, await register())
    await ws.send_json({"event": "create-booking", "data": booking_data(hours=90), "id": "c"})
    event, reply = await next_frame(ws), await next_frame(ws)
    assert (event["event"], reply["event"], reply["id"]) == ("booking.created", "create-booking", "c")
    assert event["data"] == reply["data"]
    await ws.send_json({"event": "delete-booking", "data": {"id": reply["data"]["id"]}, "id": "d"})
    event, reply = await next_frame(ws), await next_frame(ws)
    assert (event["event"], reply["event"], reply["id"]) == ("booking.deleted", "delete-booking", "d")
    await ws.close()


async def test_create_booking_replays_with_the_same_idempotency_key(
    client: Client, register: Registrar
) -> None:
    user = await register()
    ws = await open_ws(client, user)
    body = booking_data(hours=40, idempotencyKey="k-1")
    first = await ask(ws, "create-booking", body, id="1")
    second = await ask(ws, "create-booking", body, id="2")
    assert first["data"] == second["data"]
    other = await ask(ws, "create-booking", {**booking_data(hours=60), "idempotencyKey": "k-1"}, id="3")
    assert other["data"]["status"] == 422
    await ws.close()


async def test_someone_elses_booking_is_404_over_ws_too(client: Client, register: Registrar) -> None:
    alice, bob = await register(), await register()
    booking = await (await client.post("/api/booking", json=booking_data(), headers=auth(alice))).json()
    ws = await open_ws(client, bob)
    for event, data in [
        ("get-booking", {"id": booking["id"]}),
        ("update-booking", {"id": booking["id"], "title": "mine now"}),
        ("delete-booking", {"id": booking["id"]}),
    ]:
        assert (await ask(ws, event, data))["data"]["status"] == 404
    refused = await ask(ws, "get-bookings", {"userId": alice["user"]["id"]})
    assert refused["data"]["status"] == 403
    await ws.close()


# --- hostile clients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "echo"),
    [
        ("{not json", 400, None),
        ("[1, 2, 3]", 400, None),
        ('"just a string"', 400, None),
        ('{"data": {}, "id": "x"}', 400, "x"),  # no event
        ('{"event": 5, "id": "x"}', 400, "x"),
        ('{"event": "ping", "data": [1], "id": "x"}', 400, "x"),
        ('{"event": "ping", "id": {"nested": 1}}', 400, None),
        ('{"event": "ping", "id": true}', 400, None),
        ('{"event": "no-such-event", "id": "x"}', 400, "x"),
        ('{"event": "join-user-room", "data": {}, "id": "x"}', 400, "x"),
        ('{"event": "join-user-room", "data": {"userId": 123}, "id": "x"}', 400, "x"),
        ('{"event": "join-user-room", "data": {"userId": "me", "extra": 1}, "id": "x"}', 400, "x"),
        ('{"event": "get-booking", "data": {"id": 5}, "id": "x"}', 400, "x"),
        ('{"event": "get-booking", "data": {"id": "not-a-uuid"}, "id": "x"}', 400, "x"),
        ('{"event": "create-booking", "data": {}, "id": "x"}', 400, "x"),
        ('{"event": "create-booking", "data": {"title": ["a"]}, "id": "x"}', 400, "x"),
        ('{"event": "get-bookings", "data": {"limit": 1000}, "id": "x"}', 400, "x"),
        ('{"event": "delete-booking", "data": {"id": null}, "id": "x"}', 400, "x"),
    ],
)
async def test_hostile_frames_get_error_frames_and_the_socket_stays_open(
    client: Client, register: Registrar, raw: str, status: int, echo: str | None
) -> None:
    ws = await open_ws(client, await register())
    await ws.send_str(raw)
    reply = await next_frame(ws)
    assert reply["event"] == "error"
    assert reply["data"]["status"] == status
    assert isinstance(reply["data"]["message"], str) and reply["data"]["message"]
    assert reply.get("id") == echo
    assert (await ask(ws, "ping"))["event"] == "pong"
    await ws.close()


async def test_binary_frames_are_refused_with_415(client: Client, register: Registrar) -> None:
    ws = await open_ws(client, await register())
    await ws.send_bytes(b'{"event": "ping"}')
    reply = await next_frame(ws)
    assert reply["data"]["status"] == 415
    assert (await ask(ws, "ping"))["event"] == "pong"
    await ws.close()


async def test_a_1mb_frame_closes_1009_and_others_are_unaffected(client: Client, register: Registrar) -> None:
    bystander = await open_ws(client, await register())
    ws = await open_ws(client, await register())
    await ask(ws, "ping")
    await ws.send_str('{"event":"ping","data":{"pad":"' + "x" * 1024 * 1024 + '"}}')
    assert await close_code(ws) == 1009
    assert (await ask(bystander, "ping"))["event"] == "pong"
    assert (await client.get("/health")).status == 200
    await bystander.close()


async def test_a_flood_gets_429s_then_a_1008_close(make_client: MakeClient, register: Registrar) -> None:
    client = await make_client(ws_rate_per_second=0.01, ws_rate_burst=5, ws_rate_strikes=3)
    user = await client.post(
        "/api/auth/register",
        json={"email": f"f-{uuid.uuid4().hex}@example.com", "password": "x" * 12, "name": "F"},
    )
    ws = await open_ws(client, await user.json())
    for n in range(50):
        await ws.send_json({"event": "ping", "id": n})
    replies: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not WSMsgType.TEXT:
            break
        replies.append(msg.json())
    assert ws.close_code == 1008
    assert [r["event"] for r in replies] == ["pong"] * 5 + ["error"] * 3
    assert [r["id"] for r in replies] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert {r["data"]["status"] for r in replies[5:]} == {429}
    assert all(r["data"]["retryAfter"] >= 1 for r in replies[5:])


async def test_a_client_that_never_reads_is_closed_1013_and_others_stay_healthy(
    make_client: MakeClient, register: Registrar
) -> None:
    client = await make_client(ws_outbox_size=4)
    sessions = []
    for _ in range(2):
        resp = await client.post(
            "/api/auth/register",
            json={"email": f"s-{uuid.uuid4().hex}@example.com", "password": "x" * 12, "name": "S"},
        )
        sessions.append(await resp.json())
    slow_ws, healthy_ws = [await open_ws(client, s) for s in sessions]
    await ask(slow_ws, "ping")
    await ask(healthy_ws, "ping")
    slow_id = uuid.UUID(sessions[0]["user"]["id"])
    hub = client.app[HUB]
    payload = {"blob": "x" * 128 * 1024}

    def server_closed_the_slow_socket() -> bool:
        return any(ws.closed for ws in client.app[WEBSOCKETS])

    # Push events while the slow client reads nothing, until its kernel buffers, then its outbox, fill.
    deadline = time.monotonic() + 20
    while not server_closed_the_slow_socket():
        assert time.monotonic() < deadline, "the server never gave up on a client that does not read"
        hub.to_user(slow_id, make_event("system.notification", payload))
        await asyncio.sleep(0.002)
    # The server is healthy and the other client is unaffected, while the slow one is still stuck.
    assert (await ask(healthy_ws, "ping", id="still-here"))["event"] == "pong"
    assert (await client.get("/health")).status == 200
    # Once it does read, it finds the backlog and then the close frame.
    assert await close_code(slow_ws, within=10) == 1013

    async def gauge_at_one() -> bool:
        text = await (await client.get("/metrics")).text()
        return "websocket_connections 1.0" in text

    await wait_for(gauge_at_one, what="the slow socket to be forgotten")
    await healthy_ws.close()


async def test_origin_allow_list_is_checked_at_the_handshake(make_client: MakeClient) -> None:
    client = await make_client(ws_allowed_origins=("https://app.example",))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws/", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws/", headers={"Origin": "null"})
    for origin in ("https://app.example", f"http://{client.host}:{client.port}", None):
        headers = {"Origin": origin} if origin else {}
        ws = await client.ws_connect("/ws/", headers=headers)
        await ws.close()


async def test_the_gauge_counts_open_sockets(client: Client, register: Registrar) -> None:
    user = await register()
    sockets = [await open_ws(client, user) for _ in range(3)]
    for ws in sockets:
        await ask(ws, "ping")
    assert "websocket_connections 3.0" in await (await client.get("/metrics")).text()
    for ws in sockets:
        await ws.close()

    async def gauge_at_zero() -> bool:
        return "websocket_connections 0.0" in await (await client.get("/metrics")).text()

    await wait_for(gauge_at_zero, what="the gauge to drop to 0")


async def test_shutdown_closes_sockets_with_1001(client: Client, register: Registrar) -> None:
    ws = await open_ws(client, await register())
    await ask(ws, "ping")
    assert close_all in client.app.on_shutdown
    await close_all(client.app)
    assert await close_code(ws) == 1001


async def test_commands_count_against_the_per_user_api_limit_shared_with_rest(
    make_client: MakeClient,
) -> None:
    # A day-long window, so the test cannot straddle a window boundary.
    client = await make_client(api_rate_per_user=2, api_rate_window=86400)
    resp = await client.post(
        "/api/auth/register",
        json={"email": f"l-{uuid.uuid4().hex}@example.com", "password": "x" * 12, "name": "L"},
    )
    user = await resp.json()
    ws = await open_ws(client, user)
    for n in range(10):  # socket housekeeping is not metered
        assert (await ask(ws, "ping", id=n))["event"] == "pong"
    statuses = [(await ask(ws, "get-bookings", id=f"g{n}"))["data"] for n in range(3)]
    assert "meta" in statuses[0] and "meta" in statuses[1]
    assert statuses[2]["status"] == 429 and statuses[2]["retryAfter"] >= 1
    # Two socket calls and one refused: the same user's REST call finds the budget spent too.
    assert (await client.get("/api/booking", headers=auth(user))).status == 429
    await ws.close()
