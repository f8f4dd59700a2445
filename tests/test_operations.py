"""/health, /metrics, request ids, the OpenAPI document and Swagger UI."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from openapi_spec_validator import validate

from tests.conftest import Client


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


async def test_openapi_document_is_valid_and_complete(client: Client) -> None:
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
    assert served - documented == set()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert op.get("responses"), f"{method.upper()} {path} documents no responses"


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
