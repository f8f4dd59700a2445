"""POST /api/notifications/broadcast in-process, on real PostgreSQL and Redis: who may call it, what a
socket receives, hostile bodies, and Redis down. (Across two real processes: tests/e2e/test_ws_e2e.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from actors.hub import make_event
from server.bus.redisgate import RedisDown
from server.web.keys import AUTH, HUB, REDIS_GATE
from tests.conftest import Client, Registrar, auth
from tests.private_redis import PrivateRedis
from tests.support import unique_email
from tests.ws_support import ask, events_until_pong

URL = "/api/notifications/broadcast"


async def test_an_admin_broadcast_reaches_every_socket_once_and_is_answered_202(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    users = [await register(), await register()]
    sockets = [await client.ws_connect(f"/ws/?token={s['accessToken']}") for s in (*users, admin)]
    for ws in sockets:
        await ask(ws, "ping")
    body = {"message": "Maintenance at 18:00 UTC", "data": {"severity": "info", "minutes": 15}}
    resp = await client.post(URL, json=body, headers=auth(admin))
    assert resp.status == 202, await resp.text()
    sent = await resp.json()
    assert (sent["event"], sent["data"]) == ("system.notification", body)
    assert sent["timestamp"].endswith("Z")
    for ws in sockets:
        assert await events_until_pong(ws) == [sent]
        await ws.close()
    # Without `data`, the frame has none either.
    resp = await client.post(URL, json={"message": "short"}, headers=auth(admin))
    assert (await resp.json())["data"] == {"message": "short"}


async def test_only_an_admin_may_broadcast(client: Client, register: Registrar) -> None:
    user = await register()
    ws = await client.ws_connect(f"/ws/?token={user['accessToken']}")
    await ask(ws, "ping")
    anonymous = await client.post(URL, json={"message": "hi"})
    assert anonymous.status == 401
    assert anonymous.content_type == "application/problem+json"
    refused = await client.post(URL, json={"message": "hi"}, headers=auth(user))
    assert refused.status == 403
    assert refused.content_type == "application/problem+json"
    # The role is checked before the body: a plain user learns nothing about the rules from 400s.
    assert (await client.post(URL, json={"message": ""}, headers=auth(user))).status == 403
    assert await events_until_pong(ws) == []
    await ws.close()


HOSTILE: list[tuple[str, Any, str]] = [
    ("no message", {"data": {}}, "message"),
    ("empty message", {"message": ""}, "message"),
    ("blank message", {"message": "   \n"}, "message"),
    ("1001 characters", {"message": "x" * 1001}, "message"),
    ("message not a string", {"message": 42}, "message"),
    ("message null", {"message": None}, "message"),
    ("data an array", {"message": "hi", "data": [1, 2]}, "data"),
    ("data a string", {"message": "hi", "data": "{}"}, "data"),
    ("data too big", {"message": "hi", "data": {"blob": "x" * 4100}}, "data"),
    ("an unknown field", {"message": "hi", "to": "everyone"}, "to"),
    ("NUL in the message", {"message": "a\x00b"}, "message"),
    ("NUL deep in data", {"message": "hi", "data": {"a": [{"b": "\x00"}]}}, "data"),
    ("a lone surrogate", {"message": "\ud800"}, "message"),
    ("not an object", ["message"], "body"),
]


@pytest.mark.parametrize(("case", "payload", "field"), HOSTILE, ids=[c for c, _, _ in HOSTILE])
async def test_hostile_bodies_are_400_naming_the_field_and_send_nothing(
    client: Client, admin: dict[str, Any], case: str, payload: Any, field: str
) -> None:
    ws = await client.ws_connect(f"/ws/?token={admin['accessToken']}")
    await ask(ws, "ping")
    resp = await client.post(URL, json=payload, headers=auth(admin))
    assert resp.status == 400, (case, await resp.text())
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert field in {e["field"] for e in problem["errors"]}, (case, problem)
    assert await events_until_pong(ws) == [], case
    await ws.close()


RAW: list[tuple[str, bytes, str, int]] = [
    ("NaN in data", b'{"message":"hi","data":{"x":NaN}}', "application/json", 400),
    ("Infinity in data", b'{"message":"hi","data":{"x":-Infinity}}', "application/json", 400),
    (
        "nested too deeply",
        b'{"message":"hi","data":' + b'{"a":' * 3000 + b"1" + b"}" * 3001,
        "application/json",
        400,
    ),
    ("not JSON", b"message=hi", "application/json", 400),
    ("no body", b"", "application/json", 400),
    ("a form", b"message=hi", "application/x-www-form-urlencoded", 415),
    ("over MAX_BODY_BYTES", b'{"message":"' + b"x" * 300_000 + b'"}', "application/json", 413),
]


@pytest.mark.parametrize(("case", "raw", "content_type", "status"), RAW, ids=[c for c, *_ in RAW])
async def test_malformed_bodies_are_refused_never_500(
    client: Client, admin: dict[str, Any], case: str, raw: bytes, content_type: str, status: int
) -> None:
    headers = {**auth(admin), "Content-Type": content_type}
    resp = await client.post(URL, data=raw, headers=headers)
    assert resp.status == status, (case, await resp.text())
    assert resp.content_type == "application/problem+json"


async def admin_with_a_socket(client: Client) -> tuple[dict[str, Any], aiohttp.ClientWebSocketResponse]:
    """An admin logged in on `client`'s app, with an open, authenticated socket."""
    email = unique_email("admin")
    await client.app[AUTH].ensure_admin(email=email, password="admin password 123")
    login = await client.post("/api/auth/login", json={"email": email, "password": "admin password 123"})
    admin: dict[str, Any] = await login.json()
    ws = await client.ws_connect(f"/ws/?token={admin['accessToken']}")
    await ask(ws, "ping")
    return admin, ws


async def test_redis_down_is_503_and_no_socket_gets_a_half_sent_broadcast(
    make_client: Callable[..., Awaitable[Client]], private_redis: PrivateRedis
) -> None:
    client = await make_client(redis_url=private_redis.url, db_timeout=0.5)
    admin, ws = await admin_with_a_socket(client)

    await asyncio.to_thread(private_redis.stop)
    resp = await client.post(URL, json={"message": "while Redis is down"}, headers=auth(admin))
    assert resp.status == 503, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    # The publish itself refuses before any local delivery, so the caller's 503 is the whole truth.
    with pytest.raises(RedisDown):
        await client.app[HUB].announce(make_event("system.notification", {"message": "direct"}))
    assert await events_until_pong(ws) == []
    await ws.close()


async def test_a_frozen_redis_is_503_within_redis_timeout_and_then_skipped_at_once(
    make_client: Callable[..., Awaitable[Client]], private_redis: PrivateRedis
) -> None:
    """The broadcast is a request-path Redis call like any other: bounded by REDIS_TIMEOUT through the
    gate, not by the client's socket timeout (DB_TIMEOUT), and skipped while the gate is open."""
    client = await make_client(
        redis_url=private_redis.url, db_timeout=5.0, redis_timeout=0.3, redis_skip_seconds=30.0
    )
    admin, ws = await admin_with_a_socket(client)

    private_redis.hang()
    try:
        started = time.monotonic()
        resp = await client.post(URL, json={"message": "while Redis is frozen"}, headers=auth(admin))
        first = time.monotonic() - started
        assert resp.status == 503, await resp.text()
        assert first < 2.0, f"the broadcast waited {first:.2f}s on a frozen Redis (REDIS_TIMEOUT is 0.3 s)"
        assert client.app[REDIS_GATE].down
        started = time.monotonic()
        resp = await client.post(URL, json={"message": "again"}, headers=auth(admin))
        again = time.monotonic() - started
        assert resp.status == 503
        assert again < 1.0, f"the open gate should skip the publish at once, not wait {again:.2f}s"
        assert await events_until_pong(ws) == []
    finally:
        private_redis.resume()
    await ws.close()
