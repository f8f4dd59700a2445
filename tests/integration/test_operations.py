"""/health, /metrics, request ids, the OpenAPI document and Swagger UI."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from openapi_spec_validator import validate

from server.base.settings import Settings
from server.bus.jobstats import JobStats
from server.web.keys import REDIS
from tests.conftest import Client, Registrar, auth
from tests.private_redis import PrivateRedis
from tests.ws_support import booking_data


async def test_health_reports_both_dependencies(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"] == {"database": "ok", "redis": "ok"}
    assert body["status"] == "ok"


async def test_health_answers_fast_and_names_a_hanging_redis(make_client: Any) -> None:
    # A TCP server that accepts and never answers: the worst kind of dependency failure.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    port = hang.getsockname()[1]
    try:
        client = await make_client(redis_url=f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        resp = await client.get("/health")
        elapsed = time.monotonic() - started
        assert resp.status == 503
        body = await resp.json()
        assert body["checks"]["redis"] != "ok"
        assert body["checks"]["database"] == "ok"
        assert elapsed < 1.0
    finally:
        hang.close()


async def test_health_answers_fast_and_names_a_hanging_database(make_client: Any) -> None:
    # Accepts the TCP connection and never says a word: asyncpg waits for the server's first message.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    port = hang.getsockname()[1]
    try:
        client = await make_client(database_url=f"postgresql://postgres@127.0.0.1:{port}/none")
        started = time.monotonic()
        resp = await client.get("/health")
        elapsed = time.monotonic() - started
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "degraded"
        assert body["checks"]["database"] != "ok"
        assert body["checks"]["redis"] == "ok"
        assert elapsed < 1.0, elapsed
    finally:
        hang.close()


async def test_health_names_an_unreachable_database(make_client: Any) -> None:
    client = await make_client(database_url="postgresql://postgres@127.0.0.1:1/none")
    resp = await client.get("/health")
    assert resp.status == 503
    assert (await resp.json())["checks"]["database"] != "ok"


async def test_request_id_is_echoed_or_generated(client: Client) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    hostile = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 300})
    assert hostile.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(hostile.headers["X-Request-ID"]) == 32


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    missing = await client.get("/api/nothing-here")
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    wrong = await client.delete("/api/auth/login")
    assert wrong.status == 405
    assert (await wrong.json())["status"] == 405


async def test_metrics_count_requests_by_route(client: Client) -> None:
    await client.get("/health")
    text = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="GET",route="/health",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text


async def test_metrics_count_other_methods_as_other(client: Client) -> None:
    """HTTP's parser takes some thirty methods; the `method` label keeps the ones the API answers."""
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        resp = await client.request(method, "/health")
        assert resp.status == 405
    text = await (await client.get("/metrics")).text()
    assert "PROPFIND" not in text and "PURGE" not in text
    assert 'http_requests_total{method="OTHER",route="unmatched",status="405"} 3.0' in text


APP = "https://app.example"


async def test_cors_preflight_and_headers_on_every_answer_to_an_allowed_origin(make_client: Any) -> None:
    """An allowed origin gets its preflight answered and the CORS headers on every answer, a problem
    too (a browser hides the body of an answer without them); any other origin gets none of it."""
    client = await make_client(cors_origins=(APP,))
    preflight = await client.options(
        "/api/booking", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]

    ok = await client.get("/health", headers={"Origin": APP})
    refused = await client.post("/api/booking", json={}, headers={"Origin": APP})  # no token: 401
    too_big = await client.post(
        "/api/booking", data=b"x" * 300_000, headers={"Origin": APP, "Content-Type": "application/json"}
    )
    assert (ok.status, refused.status, too_big.status) == (200, 401, 413)
    for answer in (ok, refused, too_big):
        assert answer.headers["Access-Control-Allow-Origin"] == APP
        assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
        assert answer.headers["Vary"] == "Origin"

    other = "https://evil.example"
    denied = await client.options(
        "/api/booking", headers={"Origin": other, "Access-Control-Request-Method": "POST"}
    )
    assert denied.status == 405  # no preflight for it: the route has no OPTIONS
    for answer in (denied, await client.get("/health", headers={"Origin": other})):
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_no_cors_headers_without_cors_origins(client: Client) -> None:
    answer = await client.get("/health", headers={"Origin": APP})
    assert answer.status == 200
    assert "Access-Control-Allow-Origin" not in answer.headers


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text, or None when absent."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_metrics_has_every_figure_spec_5_lists_and_counts_reminders_scheduled(
    client: Client, register: Registrar, settings: Settings
) -> None:
    """SPEC §5: request counts and latency by route, actors, mailbox depth, sockets, reminders
    scheduled / sent / late. Scheduled is this process's count; sent and lateness come from Redis."""
    user = await register()
    created = []
    for n, minutes in enumerate((10, 0, None, 60)):
        body = booking_data(hours=30 + 2 * n, reminderMinutesBefore=minutes)
        resp = await client.post("/api/booking", json=body, headers=auth(user))
        assert resp.status == 201, await resp.text()
        created.append(await resp.json())
    text = await (await client.get("/metrics")).text()
    assert metric(text, "reminders_scheduled_total") == 3  # `null` minutes: no reminder
    moved = booking_data(hours=50)
    resp = await client.patch(
        f"/api/booking/{created[0]['id']}",
        json={"startTime": moved["startTime"], "endTime": moved["endTime"]},
        headers=auth(user),
    )
    assert resp.status == 200
    retitled = await client.patch(f"/api/booking/{created[1]['id']}", json={"title": "t"}, headers=auth(user))
    assert retitled.status == 200
    assert (await client.delete(f"/api/booking/{created[3]['id']}", headers=auth(user))).status == 204
    text = await (await client.get("/metrics")).text()
    assert metric(text, "reminders_scheduled_total") == 4  # moved: re-armed; retitled, deleted: not

    assert metric(text, "reminders_sent_total") == 0  # a fresh prefix: no worker has sent any
    stats = JobStats(client.app[REDIS], prefix=settings.redis_prefix)
    for lateness in (0.2, 0.4, 3.0):
        await stats.record(
            booking_id=uuid.uuid4(), due_at="2030-01-01T10:00:00+00:00", status="sent", lateness=lateness
        )
    text = await (await client.get("/metrics")).text()
    assert metric(text, "reminders_sent_total") == 3
    assert 'reminder_lateness_seconds{quantile="0.5"} 0.4' in text
    assert 'reminder_lateness_seconds{quantile="0.99"} 3.0' in text
    assert metric(text, "reminder_lateness_samples") == 3
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "actors_active",
        "actor_mailbox_depth",
        "websocket_connections",
    ):
        assert re.search(rf"^{name}[{{ ]", text, flags=re.MULTILINE), name


async def test_metrics_still_answer_when_redis_is_down(
    make_client: Callable[..., Awaitable[Client]], private_redis: PrivateRedis
) -> None:
    client = await make_client(redis_url=private_redis.url)
    await asyncio.to_thread(private_redis.stop)
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert metric(text, "reminders_scheduled_total") == 0
    assert metric(text, "reminders_sent_total") is None  # unknown, not a made-up 0


JSON_BODY_ERRORS = {"400", "413", "415"}
AUTHENTICATED_ERRORS = {"401", "429", "503"}


def _header_names(response: dict[str, Any]) -> set[str]:
    return set(response.get("headers", {}))


def _missing_declarations(document: dict[str, Any]) -> list[str]:
    """What each operation's own kind obliges it to document, read from the document alone."""
    missing: list[str] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            codes = set(op.get("responses", {}))
            if not codes:
                missing.append(f"{where}: no responses")
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                missing += [
                    f"{where}: takes a JSON body but lacks {c}" for c in sorted(JSON_BODY_ERRORS - codes)
                ]
            if op.get("security"):
                missing += [
                    f"{where}: authenticated but lacks {c}" for c in sorted(AUTHENTICATED_ERRORS - codes)
                ]
            for code, response in op.get("responses", {}).items():
                headers = _header_names(response)
                if code != "101" and "X-Request-ID" not in headers:
                    missing.append(f"{where} {code}: X-Request-ID header undocumented")
                if code in ("429", "503") and "Retry-After" not in headers:
                    missing.append(f"{where} {code}: Retry-After header undocumented")
    return missing


async def test_openapi_document_is_valid_and_complete(client: Client, register: Registrar) -> None:
    resp = await client.get("/api/docs/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    assert document["openapi"].startswith("3.0")
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith(
            ("/api/auth", "/api/users", "/api/booking", "/api/notifications", "/health")
        ):
            served.add((path, route.method.lower()))
    # HEAD is served for every GET but not listed as an operation of its own.
    assert {method for _, method in documented} <= {"get", "post", "put", "patch", "delete"}
    assert {(p, m) for p, m in served if m != "head"} - documented == set()
    assert _missing_declarations(document) == []

    # What the operations do, against what they declare: call each one anonymously and as a plain user
    # with an empty body and unknown ids. Answering 401 obliges `security`; answering a non-admin 403
    # obliges 403 (admin routes check the role before any input, so any input shows it).
    user = await register()
    undeclared = []
    for path, operations in document["paths"].items():
        if path in ("/ws/", "/metrics"):
            continue
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        for method, op in operations.items():
            body = {} if "requestBody" in op else None
            anonymous = await client.request(method, url, json=body)
            plain_user = await client.request(method, url, json=body, headers=auth(user))
            for who, answer in (("anonymous", anonymous), ("a plain user", plain_user)):
                assert answer.status < 500, f"{method.upper()} {path} as {who}: {answer.status}"
                if str(answer.status) not in op["responses"]:
                    undeclared.append(f"{method.upper()} {path} answers {who} {answer.status}, undocumented")
            if anonymous.status == 401 and not op.get("security"):
                undeclared.append(f"{method.upper()} {path} requires a token but declares no security")
    assert undeclared == []


def test_the_completeness_check_catches_what_it_should() -> None:
    """The checks above must be able to fail: an operation stripped of each obligation is caught."""
    problem = {"headers": {"X-Request-ID": {}}}
    limited = {"headers": {"X-Request-ID": {}, "Retry-After": {}}}
    complete = {
        "requestBody": {"content": {"application/json": {}}},
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": problem,
            "400": problem,
            "401": problem,
            "403": problem,
            "413": problem,
            "415": problem,
            "429": limited,
            "503": limited,
        },
    }
    assert _missing_declarations({"paths": {"/x": {"post": complete}}}) == []
    for code in ("400", "413", "415", "401", "429", "503"):
        broken = {**complete, "responses": {k: v for k, v in complete["responses"].items() if k != code}}
        assert any(code in m for m in _missing_declarations({"paths": {"/x": {"post": broken}}})), code
    no_id = {**complete, "responses": {**complete["responses"], "200": {}}}
    assert _missing_declarations({"paths": {"/x": {"post": no_id}}}) == [
        "POST /x 200: X-Request-ID header undocumented"
    ]
    no_retry = {**complete, "responses": {**complete["responses"], "429": problem}}
    assert _missing_declarations({"paths": {"/x": {"post": no_retry}}}) == [
        "POST /x 429: Retry-After header undocumented"
    ]


async def test_booking_responses_document_their_headers(client: Client) -> None:
    document = await (await client.get("/api/docs/openapi.json")).json()
    paths = document["paths"]
    assert {"ETag", "Location", "Idempotent-Replayed"} <= _header_names(
        paths["/api/booking"]["post"]["responses"]["201"]
    )
    for path, method in (
        ("/api/booking/{id}", "get"),
        ("/api/booking/{id}", "patch"),
        ("/api/booking/{id}/status", "patch"),
    ):
        assert "ETag" in _header_names(paths[path][method]["responses"]["200"]), (path, method)
    assert "WWW-Authenticate" in _header_names(paths["/api/auth/me"]["get"]["responses"]["401"])
    assert set(document["components"]["headers"]) >= {"ETag", "Location", "Retry-After", "X-Request-ID"}


async def test_swagger_ui_is_served_locally(client: Client) -> None:
    resp = await client.get("/api/")
    assert resp.status == 200
    html = await resp.text()
    assert "swagger" in html.lower()
    assert "cdn" not in html.lower()


async def test_concurrent_requests_get_distinct_ids(client: Client) -> None:
    responses = await asyncio.gather(*(client.get("/health") for _ in range(10)))
    assert len({r.headers["X-Request-ID"] for r in responses}) == 10


async def test_logs_carry_request_ids_but_no_secrets(client: Client, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    password = "s3cret-password-value"
    email = f"log-{time.time_ns()}@example.com"
    reg = await client.post("/api/auth/register", json={"email": email, "password": password, "name": "L"})
    session = await reg.json()
    await client.get("/api/auth/me", headers={"Authorization": f"Bearer {session['accessToken']}"})
    await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})
    await client.get(f"/health?token={session['accessToken']}")
    # aiohttp's own access log belongs to the test server; `booking serve` runs with access_log=None.
    ours = [r for r in caplog.records if r.name != "aiohttp.access"]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert "/api/auth/me 200" in text
    assert reg.headers["X-Request-ID"] in text
    for secret in (password, session["accessToken"], session["refreshToken"]):
        assert secret not in text
