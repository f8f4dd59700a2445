"""Hostile input through the one validation path (handlers/validation.py): REST and WebSocket alike.

Each case here was a 500 (or a 1011 close) once: PostgreSQL refusing NUL, asyncpg refusing lone
surrogates or out-of-range dates, json.loads recursing or refusing a huge integer. A client's input is
a 400 with field errors, and a socket answers an error frame and stays open.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.validation import unstorable_text
from tests.conftest import Client, Registrar, auth
from tests.support import unique_email
from tests.ws_support import ask, booking_data, next_frame

PASSWORD = "correct horse battery"
NUL = "a\u0000b"
SURROGATE = "a\ud800b"


def _send(payload: Any) -> bytes:
    """JSON as a client sends it: `ensure_ascii` writes NUL and surrogates as \\u escapes."""
    return json.dumps(payload).encode()


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


# --- NUL and lone surrogates in any string field -------------------------------------------------


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_register_and_login_refuse_bad_characters_in_text(client: Client, bad: str) -> None:
    register = {"email": unique_email(), "password": PASSWORD, "name": bad}
    await _assert_400(await _post_raw(client, "/api/auth/register", _send(register)), "name")
    register_password = {"email": unique_email(), "password": PASSWORD + bad, "name": "x"}
    await _assert_400(await _post_raw(client, "/api/auth/register", _send(register_password)), "password")
    login = {"email": bad + "@example.com", "password": PASSWORD}
    await _assert_400(await _post_raw(client, "/api/auth/login", _send(login)), "email")
    refresh = {"refreshToken": bad}
    await _assert_400(await _post_raw(client, "/api/auth/refresh", _send(refresh)), "refreshToken")
    await _assert_400(await _post_raw(client, "/api/auth/logout", _send(refresh)), "refreshToken")


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize("field", ["title", "description", "location", "notes"])
async def test_booking_text_fields_refuse_bad_characters(
    client: Client, register: Registrar, field: str, bad: str
) -> None:
    user = await register()
    body = booking_data(hours=30, **{field: bad})
    await _assert_400(await _post_raw(client, "/api/booking", _send(body), auth(user)), field)
    created = await client.post("/api/booking", json=booking_data(hours=30), headers=auth(user))
    assert created.status == 201
    url = f"/api/booking/{(await created.json())['id']}"
    patch = await client.patch(
        url, data=_send({field: bad}), headers={**auth(user), "Content-Type": "application/json"}
    )
    await _assert_400(patch, field)
    status = await client.patch(
        url + "/status",
        data=_send({"status": bad}),
        headers={**auth(user), "Content-Type": "application/json"},
    )
    await _assert_400(status, "status")
    listing = await client.get("/api/booking", headers=auth(user))
    assert (await listing.json())["meta"]["total"] == 1  # only the good one was written


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_bad_characters_in_a_field_name_are_400_without_echoing_it(
    client: Client, register: Registrar, bad: str
) -> None:
    user = await register()
    body = {**booking_data(hours=30), bad: "x"}
    escaped = json.dumps(bad)[1:-1]  # the name as an ASCII JSON escape, e.g. a\\u0000b
    resp = await _post_raw(client, "/api/booking", _send(body), auth(user))
    problem = await _assert_400(resp, escaped)
    assert bad not in json.dumps(problem, ensure_ascii=False)


async def test_admin_patch_refuses_bad_characters(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    resp = await client.patch(
        f"/api/users/{user['user']['id']}",
        data=_send({"role": SURROGATE}),
        headers={**auth(admin), "Content-Type": "application/json"},
    )
    await _assert_400(resp, "role")


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_ws_frames_refuse_bad_characters(client: Client, register: Registrar, bad: str) -> None:
    user = await register()
    ws = await _open_ws(client, user)
    await ws.send_str(
        json.dumps({"event": "create-booking", "data": booking_data(hours=30, title=bad), "id": 1})
    )
    await _assert_error_frame_and_open(ws, field="title")
    created = await ask(ws, "create-booking", booking_data(hours=40), id="ok")
    assert created["event"] == "create-booking"
    update = {"id": created["data"]["id"], "notes": bad}
    await ws.send_str(json.dumps({"event": "update-booking", "data": update, "id": 2}))
    await _assert_error_frame_and_open(ws, field="notes")
    # An id that cannot be echoed safely is refused, not echoed.
    await ws.send_str(json.dumps({"event": "ping", "id": bad}))
    await _assert_error_frame_and_open(ws, field="id")
    await ws.close()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"title": "plain", "n": 1, "ok": None}, {}),
        ({"title": "emoji \U0001f600 and \u00e9"}, {}),
        ({"title": "a literal backslash-u0000: \\u0000"}, {}),
        ({"list": ["a literal \\\\u0000 after an escaped backslash"]}, {}),
        ({"title": NUL}, {"title": ["must not contain the NUL character (\\u0000)"]}),
        ({"list": ["fine", {"deep": NUL}]}, {"list": ["must not contain the NUL character (\\u0000)"]}),
        ({"list": ["\\" + NUL]}, {"list": ["must not contain the NUL character (\\u0000)"]}),
        ({"list": [[SURROGATE]]}, {"list": ["must not contain unpaired surrogates (\\ud800-\\udfff)"]}),
        ({"k\u0000": 1}, {"k\\u0000": ["field name must not contain the NUL character (\\u0000)"]}),
        ([NUL], {"body": ["must not contain the NUL character (\\u0000)"]}),
        (NUL, {"body": ["must not contain the NUL character (\\u0000)"]}),
    ],
)
def test_unstorable_text_finds_nul_and_surrogates_anywhere_and_nothing_else(
    payload: Any, expected: dict[str, list[str]]
) -> None:
    assert unstorable_text(payload) == expected


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


# --- datetimes outside what PostgreSQL and Python can hold ----------------------------------------


@pytest.mark.parametrize(
    "q",
    [
        "from=0001-01-01T00:00:00%2B14:00",
        "to=9999-12-31T23:59:59-14:00",
        "from=1899-12-31T23:59:59Z",
        "to=9001-01-01T00:00:00Z",
    ],
)
async def test_list_filters_outside_the_supported_range_are_400(
    client: Client, register: Registrar, q: str
) -> None:
    user = await register()
    resp = await client.get(f"/api/booking?{q}", headers=auth(user))
    await _assert_400(resp, q.split("=")[0])


async def test_list_filters_at_the_edges_of_the_range_are_accepted(
    client: Client, register: Registrar
) -> None:
    user = await register()
    resp = await client.get(
        "/api/booking?from=1900-01-01T00:00:00Z&to=9000-12-31T23:59:59Z", headers=auth(user)
    )
    assert resp.status == 200, await resp.text()


async def test_body_datetimes_outside_the_supported_range_are_400(
    client: Client, register: Registrar
) -> None:
    user = await register()
    far = {"title": "x", "startTime": "9999-12-31T00:00:00-14:00", "endTime": "9999-12-31T23:59:59-14:00"}
    await _assert_400(await client.post("/api/booking", json=far, headers=auth(user)), "startTime")
    ws = await _open_ws(client, user)
    await ws.send_str(json.dumps({"event": "get-bookings", "data": {"to": "0001-01-01T00:00:00+14:00"}}))
    await _assert_error_frame_and_open(ws, field="to")
    await ws.close()
