"""Hostile input through the one validation path (handlers/validation.py): REST and WebSocket alike.

Each case here was a 500 (or a 1011 close) once: PostgreSQL refusing NUL, asyncpg refusing lone
surrogates or out-of-range dates, json.loads recursing or refusing a huge integer. A client's input is
a 400 with field errors, and a socket answers an error frame and stays open.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Client, Registrar, auth
from tests.ws_support import ask, booking_data, next_frame


async def _post_raw(client: Client, path: str, raw: bytes, headers: dict[str, str] | None = None) -> Any:
    return await client.post(path, data=raw, headers={"Content-Type": "application/json", **(headers or {})})


async def _assert_400(resp: Any, field: str) -> dict[str, Any]:
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem: dict[str, Any] = await resp.json()
    assert field in [e["field"] for e in problem["errors"]], problem
    assert all(e["message"] for e in problem["errors"])
    return problem


async def _open_ws(client: Client, session: dict[str, Any]) -> Any:
    return await client.ws_connect(f"/ws/?token={session['accessToken']}")


async def _assert_error_frame_and_open(ws: Any, status: int = 400, field: str | None = None) -> None:
    frame = await next_frame(ws)
    assert frame["event"] == "error", frame
    assert frame["data"]["status"] == status, frame
    if field is not None:
        assert field in [e["field"] for e in frame["data"]["errors"]], frame
    assert (await ask(ws, "ping", id="after"))["event"] == "pong"


# --- JSON the parser refuses ---------------------------------------------------------------------


async def test_deeply_nested_json_is_400(client: Client, register: Registrar) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    await _assert_400(await _post_raw(client, "/api/auth/login", deep), "body")
    user = await register()
    nested_field = b'{"title": ' + deep + b"}"
    await _assert_400(await _post_raw(client, "/api/booking", nested_field, auth(user)), "body")


async def test_deeply_nested_ws_frame_is_an_error_frame(client: Client, register: Registrar) -> None:
    ws = await _open_ws(client, await register())
    await ws.send_str("[" * 30_000 + "]" * 30_000)  # under the 64 KiB frame limit
    await _assert_error_frame_and_open(ws, field="body")
    await ws.send_str('{"event": "ping", "data": {"x": ' + "[" * 30_000 + "]" * 30_000 + "}}")
    await _assert_error_frame_and_open(ws, field="body")
    await ws.close()


async def test_a_5000_digit_integer_is_400(client: Client, register: Registrar) -> None:
    user = await register()
    body = json.dumps(booking_data(hours=30)).rstrip("}") + ', "reminderMinutesBefore": ' + "9" * 5000 + "}"
    await _assert_400(await _post_raw(client, "/api/booking", body.encode(), auth(user)), "body")
    ws = await _open_ws(client, user)
    await ws.send_str('{"event": "create-booking", "id": 1, "data": ' + body + "}")
    await _assert_error_frame_and_open(ws, field="body")
    await ws.close()
