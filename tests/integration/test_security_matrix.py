"""The authorization matrix: every operation of the served OpenAPI document and every WebSocket event,
for an anonymous caller, another user, the owner and an admin, on the owner's resources.

A row per operation; the test fails when the document gains an operation the matrix does not cover, so a
new endpoint cannot ship without a decision on who may call it. Refusals must also leave the owner's data
as it was (checked by re-reading it). Runs on the real app against real PostgreSQL and Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from server.base.settings import Settings
from server.jobs import create_jobs_app
from server.web.keys import API_KEYS, DB
from storage import reminders as reminder_store
from tests.conftest import Client, Registrar, auth
from tests.ws_support import ask, booking_data, close_code

ROLES = ("anonymous", "other", "owner", "admin")


@dataclass
class World:
    client: Client
    sessions: dict[str, dict[str, Any] | None]  # role → register/login answer (None: anonymous)
    owner_id: str
    hours: list[float]

    def headers(self, role: str) -> dict[str, str]:
        session = self.sessions[role]
        return auth(session) if session else {}

    def slot(self) -> dict[str, Any]:
        self.hours[0] += 2
        return booking_data(hours=self.hours[0])

    async def new_booking(self) -> str:
        """A fresh booking of the owner's (its own slot), so each check mutates its own row."""
        resp = await self.client.post("/api/booking", json=self.slot(), headers=self.headers("owner"))
        assert resp.status == 201, await resp.text()
        booking_id: str = (await resp.json())["id"]
        return booking_id

    async def owner_booking(self, booking_id: str) -> dict[str, Any] | None:
        resp = await self.client.get(f"/api/booking/{booking_id}", headers=self.headers("owner"))
        return await resp.json() if resp.status == 200 else None

    async def new_resource(self) -> str:
        name = f"Matrix room {uuid.uuid4().hex[:10]}"
        resp = await self.client.post("/api/resources", json={"name": name}, headers=self.headers("admin"))
        assert resp.status == 201, await resp.text()
        resource_id: str = (await resp.json())["id"]
        return resource_id

    async def new_notification(self) -> str:
        async with self.client.app[DB].connect() as conn:
            note = await reminder_store.add_notification(
                conn, user_id=uuid.UUID(self.owner_id), kind="system", title="for the owner", data={}
            )
        return str(note.id)

    async def new_feed(self) -> dict[str, Any]:
        resp = await self.client.post(
            "/api/calendar/feeds", json={"kind": "bookings"}, headers=self.headers("owner")
        )
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
        return created

    async def new_webhook(self) -> dict[str, Any]:
        body = {"url": "http://127.0.0.1:9/matrix", "events": ["*"]}
        resp = await self.client.post("/api/webhooks", json=body, headers=self.headers("owner"))
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
        return created


Setup = Callable[[World], Awaitable[dict[str, Any]]]  # → {"path": ..., "json": ..., "query": ...}


async def _nothing(world: World) -> dict[str, Any]:
    return {}


async def _booking(world: World) -> dict[str, Any]:
    return {"id": await world.new_booking()}


async def _series(world: World) -> dict[str, Any]:
    """A fresh two-occurrence daily series of the owner's."""
    body = {**world.slot(), "recurrence": {"rrule": "FREQ=DAILY;COUNT=2", "timeZone": "UTC"}}
    world.hours[0] += 48
    resp = await world.client.post("/api/booking", json=body, headers=world.headers("owner"))
    assert resp.status == 201, await resp.text()
    return {"id": (await resp.json())["id"]}


async def _owner(world: World) -> dict[str, Any]:
    return {"id": world.owner_id}


async def _resource(world: World) -> dict[str, Any]:
    return {"id": await world.new_resource()}


def _resource_name(world: World) -> dict[str, Any]:
    return {"name": f"Matrix new {uuid.uuid4().hex[:10]}"}


async def _notification(world: World) -> dict[str, Any]:
    return {"id": await world.new_notification()}


async def _webhook(world: World) -> dict[str, Any]:
    return {"id": (await world.new_webhook())["id"]}


async def _feed(world: World) -> dict[str, Any]:
    return {"id": (await world.new_feed())["id"]}


async def _feed_token(world: World) -> dict[str, Any]:
    path = (await world.new_feed())["path"]
    return {"token": path.removeprefix("/cal/").removesuffix(".ics")}


async def _webhook_delivery(world: World) -> dict[str, Any]:
    endpoint = await world.new_webhook()
    resp = await world.client.post(f"/api/webhooks/{endpoint['id']}/test", headers=world.headers("owner"))
    assert resp.status == 202, await resp.text()
    return {"id": endpoint["id"], "deliveryId": (await resp.json())["id"]}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    expect: dict[str, int]  # role → status
    setup: Setup = _nothing
    body: dict[str, Any] | Callable[[World], dict[str, Any]] | None = None
    query: str = ""
    unchanged_unless: tuple[int, ...] = ()  # statuses after which the owner's booking may have changed


def _all(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def _user_route(anon: int = 401) -> dict[str, int]:
    return {"anonymous": anon, "other": 200, "owner": 200, "admin": 200}


ADMIN_ONLY = {"anonymous": 401, "other": 403, "owner": 403, "admin": 200}
OWNED = {"anonymous": 401, "other": 404, "owner": 200, "admin": 200}
PERSONAL = {"anonymous": 401, "other": 404, "owner": 200, "admin": 404}  # notifications are per user

MATRIX = [
    Row("GET", "/api/auth/me", _user_route()),
    Row("PATCH", "/api/auth/me", _user_route(), body={"timeZone": "UTC"}),
    Row("GET", "/api/users", ADMIN_ONLY),
    Row("PATCH", "/api/users/{id}", ADMIN_ONLY, _owner, {"status": "active"}),
    Row("GET", "/api/booking", _user_route()),
    Row("GET", "/api/booking", {**ADMIN_ONLY, "owner": 200}, _owner, query="userId={id}"),
    Row("GET", "/api/booking/upcoming", _user_route()),
    Row("GET", "/api/booking/past", _user_route()),
    Row(
        "POST",
        "/api/booking",
        {**_user_route(), "other": 201, "owner": 201, "admin": 201},
        body=lambda w: w.slot(),
    ),
    Row(
        "POST",
        "/api/booking",
        {"anonymous": 401, "other": 403, "owner": 201, "admin": 201},  # on behalf of the owner: admins only
        _owner,
        body=lambda w: {**w.slot(), "userId": w.owner_id},
    ),
    Row("GET", "/api/booking/{id}", OWNED, _booking),
    Row("PATCH", "/api/booking/{id}", OWNED, _booking, {"title": "changed"}, unchanged_unless=(200,)),
    Row(
        "PATCH", "/api/booking/{id}/status", OWNED, _booking, {"status": "cancelled"}, unchanged_unless=(200,)
    ),
    Row(
        "DELETE",
        "/api/booking/{id}",
        {**OWNED, "owner": 204, "admin": 204},
        _booking,
        unchanged_unless=(204,),
    ),
    Row("GET", "/api/booking/{id}/history", ADMIN_ONLY, _booking),
    Row("GET", "/api/series/{id}", OWNED, _series),
    Row("POST", "/api/resources", {**ADMIN_ONLY, "admin": 201}, body=_resource_name),
    Row("GET", "/api/resources", _user_route()),
    Row("GET", "/api/resources", {**ADMIN_ONLY, "owner": 403}, query="includeRetired=true"),
    Row("GET", "/api/resources/{id}", _user_route(), _resource),
    Row("PATCH", "/api/resources/{id}", ADMIN_ONLY, _resource, {"description": "changed"}),
    Row("DELETE", "/api/resources/{id}", {**ADMIN_ONLY, "admin": 204}, _resource),
    Row(
        "GET",
        "/api/resources/{id}/busy",
        _user_route(),
        _resource,
        query="from=2030-01-01T00:00:00Z&to=2030-01-02T00:00:00Z",
    ),
    Row("GET", "/api/resources/{id}/hours", _user_route(), _resource),
    Row("PUT", "/api/resources/{id}/hours", ADMIN_ONLY, _resource, {"weekly": None}),
    Row("GET", "/api/users/me/availability", _user_route()),
    Row("PUT", "/api/users/me/availability", _user_route(), body={"timeZone": "UTC", "weekly": None}),
    Row(
        "GET",
        "/api/availability/slots",
        _user_route(),
        _resource,
        query="resourceId={id}&from=2030-01-01T00:00:00Z&to=2030-01-02T00:00:00Z&duration=60",
    ),
    Row("GET", "/api/availability/next", _user_route(), _resource, query="resourceId={id}&duration=60"),
    Row(
        "GET",
        "/api/freebusy",
        _user_route(),
        _resource,
        query="resourceIds={id}&from=2030-01-01T00:00:00Z&to=2030-01-02T00:00:00Z",
    ),
    Row("GET", "/api/notifications", _user_route()),
    Row("POST", "/api/notifications/{id}/read", PERSONAL, _notification),
    Row("POST", "/api/notifications/broadcast", {**ADMIN_ONLY, "admin": 202}, body={"message": "matrix"}),
    Row("GET", "/api/webhooks", _user_route()),
    Row(
        "POST",
        "/api/webhooks",
        {**_user_route(), "other": 201, "owner": 201, "admin": 201},
        body={"url": "http://127.0.0.1:9/matrix", "events": ["booking.created"]},
    ),
    Row("GET", "/api/webhooks/{id}", OWNED, _webhook),
    Row("PATCH", "/api/webhooks/{id}", OWNED, _webhook, {"description": "changed"}),
    Row("DELETE", "/api/webhooks/{id}", {**OWNED, "owner": 204, "admin": 204}, _webhook),
    Row("POST", "/api/webhooks/{id}/rotate-secret", OWNED, _webhook),
    Row("GET", "/api/webhooks/{id}/deliveries", OWNED, _webhook),
    Row(
        "POST",
        "/api/webhooks/{id}/deliveries/{deliveryId}/redeliver",
        {**OWNED, "owner": 202, "admin": 202},
        _webhook_delivery,
    ),
    Row("POST", "/api/webhooks/{id}/test", {**OWNED, "owner": 202, "admin": 202}, _webhook),
    # Calendar feeds: the owner's alone, an admin's role included (a feed URL is its owner's credential).
    Row("GET", "/api/calendar/feeds", _user_route()),
    Row(
        "POST",
        "/api/calendar/feeds",
        {**_user_route(), "other": 201, "owner": 201, "admin": 201},
        body={"kind": "bookings"},
    ),
    Row("POST", "/api/calendar/feeds/{id}/rotate", PERSONAL, _feed),
    Row("DELETE", "/api/calendar/feeds/{id}", {**PERSONAL, "owner": 204}, _feed),
    # The feed itself takes no access token: its URL's token is the credential, whoever sends it.
    Row("GET", "/cal/{token}.ics", _all(200), _feed_token),
    # Public on purpose: the auth entry points, health, metrics (nginx keeps /metrics internal), the socket
    # handshake (authenticated inside, see the WebSocket matrix below).
    Row(
        "POST",
        "/api/auth/login",
        _all(401),
        body={"email": "nobody@example.com", "password": "wrong password"},
    ),
    Row("POST", "/api/auth/refresh", _all(401), body={"refreshToken": "not-a-token"}),
    Row("POST", "/api/auth/logout", _all(401), body={"refreshToken": "not-a-token"}),
    Row("GET", "/health", _all(200)),
    Row("GET", "/metrics", _all(200)),
]
# Covered elsewhere, with the reason: register needs a fresh email per call
# (tests/integration/test_auth.py), and the socket's own matrix is below; HEAD mirrors GET (aiohttp
# answers it from the GET handler).
NOT_IN_TABLE = {("POST", "/api/auth/register"), ("GET", "/ws/")}


@pytest.fixture
async def world(client: Client, register: Registrar, admin: dict[str, Any]) -> World:
    owner = await register()
    other = await register()
    return World(
        client=client,
        sessions={"anonymous": None, "other": other, "owner": owner, "admin": admin},
        owner_id=owner["user"]["id"],
        hours=[300.0],
    )


async def test_the_matrix_covers_every_documented_operation(client: Client) -> None:
    document = await (await client.get("/api/docs/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method.upper() != "HEAD"
    }
    covered = {(row.method, row.path) for row in MATRIX} | NOT_IN_TABLE
    assert documented - covered == set(), "add these operations to the authorization matrix"
    assert covered - documented == set(), "the matrix names operations the document does not have"


@pytest.mark.parametrize(
    "row", MATRIX, ids=lambda r: f"{r.method} {r.path}{'?' + r.query if r.query else ''}"
)
async def test_each_role_gets_exactly_its_answer(world: World, row: Row) -> None:
    for role in ROLES:
        values = await row.setup(world)
        path = row.path.format(**values)
        url = f"{path}?{row.query.format(**values)}" if row.query else path
        before = await world.owner_booking(values["id"]) if row.setup is _booking else None
        body = row.body(world) if callable(row.body) else row.body
        resp = await world.client.request(row.method, url, json=body, headers=world.headers(role))
        assert resp.status == row.expect[role], (role, row.method, url, resp.status, await resp.text())
        if resp.status >= 400:
            assert resp.content_type == "application/problem+json", (role, url, resp.content_type)
        if before is not None and resp.status not in row.unchanged_unless:
            assert await world.owner_booking(values["id"]) == before, (role, "a refusal changed the booking")
        if row.method == "GET" and resp.status == 200:
            head = await world.client.request("HEAD", url, headers=world.headers(role))
            assert head.status == 200, (role, "HEAD", url)


async def test_lists_never_show_another_users_bookings(world: World) -> None:
    mine = await world.new_booking()
    for path in ("/api/booking", "/api/booking/upcoming"):
        seen = {}
        for role in ("other", "owner", "admin"):
            resp = await world.client.get(f"{path}?limit=100", headers=world.headers(role))
            body = await resp.json()
            rows = body["data"] if isinstance(body, dict) else body
            seen[role] = {b["id"] for b in rows}
        assert mine not in seen["other"], path
        assert mine in seen["owner"], path
        admin_scope = await world.client.get(
            f"/api/booking?userId={world.owner_id}&limit=100", headers=world.headers("admin")
        )
        assert mine in {b["id"] for b in (await admin_scope.json())["data"]}


# --- the WebSocket matrix ----------------------------------------------------------------------------

WS_EVENTS: dict[str, Callable[[str, str, str], dict[str, Any] | None]] = {
    "ping": lambda booking, owner, resource: None,
    "join-user-room": lambda booking, owner, resource: {"userId": owner},
    "leave-user-room": lambda booking, owner, resource: {"userId": owner},
    "get-bookings": lambda booking, owner, resource: {"limit": 100},
    "get-booking": lambda booking, owner, resource: {"id": booking},
    "update-booking": lambda booking, owner, resource: {"id": booking, "title": "over ws"},
    "delete-booking": lambda booking, owner, resource: {"id": booking},
    "create-booking": lambda booking, owner, resource: booking_data(hours=900, title="ws create"),
    "join-resource-room": lambda booking, owner, resource: {"resourceId": resource},
    "leave-resource-room": lambda booking, owner, resource: {"resourceId": resource},
}
# What each role gets back for the owner's booking/room: "ok" (a reply frame of the same name) or a status.
WS_EXPECT: dict[str, dict[str, str | int]] = {
    "other": {
        "ping": "ok",
        "join-user-room": 403,
        "leave-user-room": "ok",
        "get-bookings": "ok",
        "get-booking": 404,
        "update-booking": 404,
        "delete-booking": 404,
        "create-booking": "ok",
        "join-resource-room": "ok",  # any active user may watch a resource's busy time
        "leave-resource-room": "ok",
    },
    "owner": dict.fromkeys(WS_EVENTS, "ok"),
    "admin": dict.fromkeys(WS_EVENTS, "ok"),
}


async def test_every_socket_event_refuses_an_anonymous_caller(world: World) -> None:
    booking = await world.new_booking()
    resource = await world.new_resource()
    for event, data in WS_EVENTS.items():
        ws = await world.client.ws_connect("/ws/")
        frame: dict[str, Any] = {"event": event, "id": "x"}
        payload = data(booking, world.owner_id, resource)
        if payload is not None:
            frame["data"] = payload
        await ws.send_json(frame)
        assert await close_code(ws) == 4401, event
    assert await world.owner_booking(booking) is not None


@pytest.mark.parametrize("role", ["other", "owner", "admin"])
async def test_every_socket_event_for_each_role(world: World, role: str) -> None:
    session = world.sessions[role]
    assert session is not None
    resource = await world.new_resource()
    ws = await world.client.ws_connect(f"/ws/?token={session['accessToken']}")
    try:
        for n, (event, data) in enumerate(WS_EVENTS.items()):
            booking = await world.new_booking()
            before = await world.owner_booking(booking)
            reply = await ask(ws, event, data(booking, world.owner_id, resource), id=f"{event}-{n}")
            want = WS_EXPECT[role][event]
            if want == "ok":
                assert reply["event"] != "error", (role, event, reply)
            else:
                assert reply["event"] == "error" and reply["data"]["status"] == want, (role, event, reply)
                assert await world.owner_booking(booking) == before, (role, event, "a refusal changed it")
            if role == "other" and event == "get-bookings":
                assert booking not in {b["id"] for b in reply["data"]["data"]}, (
                    "another user's booking leaked"
                )
    finally:
        await ws.close()


# --- secrets never reach the logs -------------------------------------------------------------------


async def test_no_password_or_token_reaches_the_logs_even_when_refused(
    client: Client, register: Registrar, caplog: Any
) -> None:
    import logging

    from server.web.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    password = "another s3cret password"
    session = await register(password=password)
    secrets = [password, session["accessToken"], session["refreshToken"]]
    # Refused attempts log a reason; none may carry what was sent.
    await client.post("/api/auth/login", json={"email": session["user"]["email"], "password": password + "x"})
    secrets.append(password + "x")
    await client.get("/api/auth/me", headers={"Authorization": f"Bearer {session['accessToken']}tampered"})
    await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})
    await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})  # reuse: revoked
    ws = await client.ws_connect(f"/ws/?token={session['accessToken']}")
    await ask(ws, "ping")
    await ws.close()
    bad = await client.ws_connect("/ws/")
    await bad.send_json({"event": "authenticate", "data": {"token": session["refreshToken"]}})
    await close_code(bad)
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert records, "nothing was logged: the check below would prove nothing"
    formatter = JsonFormatter()
    text = "\n".join(f"{formatter.format(r)} {r.__dict__}" for r in records)
    for secret in secrets:
        assert secret not in text


async def test_no_api_key_reaches_the_logs_used_or_refused(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, caplog: Any
) -> None:
    import logging

    from server.web.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    jobs = await aiohttp_client(create_jobs_app(settings))
    live = await jobs.app[API_KEYS].create(name="logged")
    revoked = await jobs.app[API_KEYS].create(name="logged, revoked")
    await jobs.app[API_KEYS].revoke(revoked.key.prefix)
    secret = live.token.removeprefix(f"bk_{live.key.prefix}_")
    tampered = f"bk_{live.key.prefix}_{secret[::-1]}"
    sent = [live.token, tampered, revoked.token, live.token + "x", "bk_" + secret]
    for value in sent:
        for header in ({"X-API-Key": value}, {"Authorization": f"Bearer {value}"}):
            await jobs.get("/jobs/metrics", headers=header)
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    formatter = JsonFormatter()
    text = "\n".join(f"{formatter.format(r)} {r.__dict__}" for r in records)
    assert "refused" in text, "no refusal was logged: the check below would prove nothing"
    # The caller is named by the public prefix only.
    assert any(getattr(r, "user_id", None) == f"api-key:{live.key.prefix}" for r in records)
    for value in [*sent, secret, secret[::-1], revoked.token.removeprefix(f"bk_{revoked.key.prefix}_")]:
        assert value not in text


async def test_a_header_too_long_to_parse_is_logged_without_its_value(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, capsys: Any
) -> None:
    """Over aiohttp's 8190-byte header limit the parser answers 400 and logs its error, which would quote
    the value's start (a key or token). Checked through the production logging set-up (JSON, stderr)."""
    import logging

    from server.web import logs

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    logs.configure(level="INFO", json_output=True, process="jobs")
    try:
        jobs = await aiohttp_client(create_jobs_app(settings))
        key = (await jobs.app[API_KEYS].create(name="oversized")).token
        padding = "a" * 10 * 1024
        for header in ({"X-API-Key": key + padding}, {"Authorization": f"Bearer {key}{padding}"}):
            assert (await jobs.get("/jobs/metrics", headers=header)).status == 400
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    logged = capsys.readouterr().err
    assert "LineTooLong" in logged, "the parser's error was not logged: the check below would prove nothing"
    assert key not in logged and key[16:] not in logged and padding[:50] not in logged


async def test_production_log_lines_are_json_with_request_and_user_ids(
    client: Client, register: Registrar, caplog: Any
) -> None:
    import json
    import logging

    from server.web.logs import JsonFormatter, _ContextFilter

    caplog.set_level(logging.INFO, logger="booking.access")
    session = await register()
    resp = await client.get("/api/auth/me", headers={**auth(session), "X-Request-ID": "req-matrix-1"})
    assert resp.status == 200
    line = next(r for r in caplog.records if r.name == "booking.access" and "/api/auth/me" in r.getMessage())
    _ContextFilter().filter(line)
    entry = json.loads(JsonFormatter().format(line))
    assert entry["requestId"] == "req-matrix-1"
    assert entry["userId"] == session["user"]["id"]
    assert entry["level"] == "info" and "/api/auth/me 200" in entry["msg"]
