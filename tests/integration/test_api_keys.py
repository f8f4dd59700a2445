"""API keys for the job service: `booking create-api-key` / `list-api-keys` / `revoke-api-key` as real
subprocesses, and the real job app (`create_jobs_app`) against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from openapi_spec_validator import validate

from actors.services.api_keys import ApiKeyService, NewKey
from server.base.settings import Settings
from server.jobs import JOBS_OPENAPI_PATH, create_jobs_app
from server.web.keys import API_KEYS, DB
from tests.conftest import Client, auth
from tests.integration.test_jobs import ENDPOINTS
from tests.processes import BOOKING, ROOT

KEY_FORMAT = re.compile(r"bk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@pytest.fixture
async def jobs(aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings) -> Client:
    return await aiohttp_client(create_jobs_app(replace(settings)))


async def booking(database_url: str, *args: str) -> tuple[int, str, str]:
    """The installed `booking` script (exit code, stdout, stderr), without blocking the app's loop."""
    env = {**os.environ, "DATABASE_URL": database_url, "NODE_ENV": "test"}
    process = await asyncio.create_subprocess_exec(
        str(BOOKING), *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def key_row(jobs: Client, prefix: str) -> dict[str, Any]:
    async with jobs.app[DB].connect() as conn:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE prefix = $1", prefix)
    assert row is not None
    return dict(row)


async def new_key(jobs: Client, name: str = "test", **kwargs: Any) -> NewKey:
    return await jobs.app[API_KEYS].create(name=name, **kwargs)


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "requestId"}


async def test_create_use_list_and_revoke_through_the_cli(jobs: Client, database_url: str) -> None:
    code, out, err = await booking(
        database_url, "create-api-key", "metrics scraper", "--expires-in-days", "30"
    )
    assert code == 0, err
    token = out.strip()
    found = KEY_FORMAT.fullmatch(token)
    assert found, out  # stdout is the key alone, for KEY=$(booking create-api-key …)
    prefix, secret = found.groups()
    assert prefix in err and secret not in err and "shown once" in err

    stored = await key_row(jobs, prefix)
    assert stored["name"] == "metrics scraper" and stored["last_used_at"] is None
    assert secret not in str(stored) and stored["secret_hash"] != secret and len(stored["secret_hash"]) == 64
    assert timedelta(days=29) < stored["expires_at"] - stored["created_at"] <= timedelta(days=30, seconds=5)

    for header in ({"X-API-Key": token}, {"Authorization": f"Bearer {token}"}):
        for method, path in ENDPOINTS:
            resp = await jobs.request(method, path, headers=header)
            assert resp.status == 200, (header.keys(), path, await resp.text())
    assert (await key_row(jobs, prefix))["last_used_at"] is not None

    code, out, err = await booking(database_url, "list-api-keys")
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith(prefix)]
    assert "metrics scraper" in line and " active " in line
    assert re.search(r"\d{4}-\d\d-\d\dT", line)  # the dates, last use among them
    assert secret not in out and stored["secret_hash"] not in out

    code, out, err = await booking(database_url, "revoke-api-key", prefix)
    assert code == 0 and prefix in out, err
    revoked_at = (await key_row(jobs, prefix))["revoked_at"]
    assert revoked_at is not None
    for header in ({"X-API-Key": token}, {"Authorization": f"Bearer {token}"}):
        resp = await jobs.get("/jobs/metrics", headers=header)
        assert resp.status == 401 and resp.content_type == "application/problem+json"
    # Revoking again is harmless and keeps the first time; the listing says revoked.
    code, _, err = await booking(database_url, "revoke-api-key", prefix)
    assert code == 0, err
    assert (await key_row(jobs, prefix))["revoked_at"] == revoked_at
    code, out, _ = await booking(database_url, "list-api-keys")
    assert " revoked " in next(line for line in out.splitlines() if line.startswith(prefix))


async def test_the_cli_refuses_bad_input_with_a_reason_and_a_failing_exit(
    jobs: Client, database_url: str
) -> None:
    async with jobs.app[DB].connect() as conn:
        before = await conn.fetchval("SELECT count(*) FROM api_keys")
    for args, message in (
        (["revoke-api-key", "0123456789ab"], "no API key has this prefix"),
        (["revoke-api-key", "not a prefix"], "no API key has this prefix"),
        (["revoke-api-key", ""], "no API key has this prefix"),
        (["create-api-key", "x", "--expires-in-days", "0"], "must be 1-3650 days"),
        (["create-api-key", "x", "--expires-in-days", "-5"], "must be 1-3650 days"),
        (["create-api-key", "x", "--expires-in-days", "3651"], "must be 1-3650 days"),
        (["create-api-key", "x", "--expires-in-days", "1.5"], "not a whole number of days"),
        (["create-api-key", "x", "--expires-in-days", "soon"], "not a whole number of days"),
        (["create-api-key", "   "], "invalid API key name"),
        (["create-api-key", "x" * 101], "invalid API key name"),
        (["create-api-key", "tab\tname"], "invalid API key name"),
        (["create-api-key"], "required: name"),
    ):
        code, out, err = await booking(database_url, *args)
        assert code != 0, (args, out)
        assert message in err, (args, err)
        assert "Traceback" not in err and out == "", (args, out, err)
    async with jobs.app[DB].connect() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == before


async def test_revoke_takes_the_whole_key_too(jobs: Client, database_url: str) -> None:
    created = await new_key(jobs, "pasted from a leak")
    code, out, err = await booking(database_url, "revoke-api-key", created.token)
    assert code == 0, err
    assert created.token not in out
    assert (await jobs.get("/jobs/metrics", headers={"X-API-Key": created.token})).status == 401


async def test_every_refusal_is_the_same_401(jobs: Client, admin: dict[str, Any]) -> None:
    live = await new_key(jobs, "live")
    expired = await new_key(jobs, "expired", expires_in_days=1)
    async with jobs.app[DB].begin() as conn:
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", expired.key.id
        )
    revoked = await new_key(jobs, "revoked")
    await jobs.app[API_KEYS].revoke(revoked.key.prefix)
    prefix = live.key.prefix
    secret = live.token.removeprefix(f"bk_{prefix}_")
    assert live.token == f"bk_{prefix}_{secret}"
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    refused = {
        "expired": expired.token,
        "revoked": revoked.token,
        "tampered secret": f"bk_{prefix}_{flipped}",
        "another key's secret": f"bk_{prefix}_{revoked.token.removeprefix(f'bk_{revoked.key.prefix}_')}",
        "unknown prefix": f"bk_{uuid.uuid4().hex[:12]}_{secret}",
        "empty": "",
        "scheme only": "bk_",
        "prefix only": f"bk_{prefix}",
        "prefix and separator": f"bk_{prefix}_",
        "one character short": live.token[:-1],
        "one character long": live.token + "A",
        "upper-case scheme": "BK_" + live.token[3:],
        "non-ASCII": f"bk_{prefix}_{secret[:-1]}é",
        "non-ASCII only": "ключ",
        "8 KB": "bk_" + "a" * 8000,
        "8 KB after a valid key": live.token + "a" * 8000,
    }
    forged = await jobs.get("/jobs/metrics", headers={"Authorization": "Bearer not.a.token"})
    assert forged.status == 401
    expected = without_request_id(await forged.json())
    for case, value in refused.items():
        headers: list[dict[str, str]] = [{"X-API-Key": value}]
        if value.strip():  # an empty bearer is "no credentials": the same 401, another detail
            headers.append({"Authorization": f"Bearer {value}"})
        for header in headers:
            for method, path in ENDPOINTS:
                resp = await jobs.request(method, path, headers=header)
                assert resp.status == 401, (case, list(header), path, resp.status)
                assert resp.content_type == "application/problem+json", case
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                # Word for word a forged token's answer: nothing says which part was wrong.
                assert without_request_id(await resp.json()) == expected, (case, list(header))
    # An X-API-Key header is judged alone: a valid admin token beside a bad key does not rescue it.
    both = await jobs.get("/jobs/metrics", headers={**auth(admin), "X-API-Key": refused["tampered secret"]})
    assert both.status == 401
    # None of the refusals touched the live key; it still works.
    assert (await key_row(jobs, prefix))["last_used_at"] is None
    assert (await jobs.get("/jobs/metrics", headers={"X-API-Key": live.token})).status == 200


async def test_bytes_that_are_not_utf8_are_a_401(jobs: Client) -> None:
    """Raw header bytes no client library would send (aiohttp decodes them with surrogateescape)."""
    assert jobs.server.host is not None
    reader, writer = await asyncio.open_connection(jobs.server.host, jobs.server.port)
    try:
        writer.write(
            b"GET /jobs/metrics HTTP/1.1\r\nHost: jobs\r\nX-API-Key: bk_\xff\xfe\xc3\x28\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized", answer[:300]
    assert b"application/problem+json" in rest


async def test_a_header_past_the_http_parsers_limit_is_a_400_never_a_500(jobs: Client) -> None:
    """aiohttp's parser refuses a header line over 8190 bytes before any handler runs (a plain-text 400,
    not problem+json; nginx in front refuses it too). Values up to that size reach the key check: the
    8 KB cases of test_every_refusal_is_the_same_401."""
    for value in ("bk_" + "a" * 10 * 1024, "x" * 10 * 1024):
        resp = await jobs.get("/jobs/metrics", headers={"X-API-Key": value})
        assert resp.status == 400, resp.status


async def test_last_use_is_written_at_most_once_per_interval(jobs: Client) -> None:
    created = await new_key(jobs, "busy")
    header = {"X-API-Key": created.token}
    assert (await jobs.get("/jobs/queue/stats", headers=header)).status == 200
    first = (await key_row(jobs, created.key.prefix))["last_used_at"]
    assert first is not None
    for _ in range(5):
        assert (await jobs.get("/jobs/queue/stats", headers=header)).status == 200
    assert (await key_row(jobs, created.key.prefix))["last_used_at"] == first
    # Within the interval this process does not even send the UPDATE: a row cleared behind its back stays
    # cleared (so a busy client costs no write per request).
    async with jobs.app[DB].begin() as conn:
        await conn.execute("UPDATE api_keys SET last_used_at = NULL WHERE id = $1", created.key.id)
    assert (await jobs.get("/jobs/queue/stats", headers=header)).status == 200
    assert (await key_row(jobs, created.key.prefix))["last_used_at"] is None
    async with jobs.app[DB].begin() as conn:
        await conn.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", created.key.id, first)
    # Another process (its own service, nothing remembered in memory) does not write either: the UPDATE
    # itself checks the interval.
    other_process = ApiKeyService(jobs.app[DB])
    await other_process.authenticate(created.token)
    assert (await key_row(jobs, created.key.prefix))["last_used_at"] == first
    # Once the interval has passed, the next use is recorded.
    service = jobs.app[API_KEYS]
    service.touch_interval = timedelta(0)
    assert (await jobs.get("/jobs/queue/stats", headers=header)).status == 200
    assert (await key_row(jobs, created.key.prefix))["last_used_at"] > first


async def test_the_web_api_refuses_api_keys(client: Client, jobs: Client) -> None:
    created = await new_key(jobs, "not for /api/")
    for header in ({"X-API-Key": created.token}, {"Authorization": f"Bearer {created.token}"}):
        for path in ("/api/auth/me", "/api/booking", "/api/users", "/api/notifications"):
            resp = await client.get(path, headers=header)
            assert resp.status == 401, (path, list(header), resp.status)
            assert resp.content_type == "application/problem+json"
    assert (await key_row(jobs, created.key.prefix))["last_used_at"] is None


async def test_the_openapi_documents_name_the_api_key_scheme(client: Client, jobs: Client) -> None:
    document = await (await jobs.get(JOBS_OPENAPI_PATH)).json()
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    for method, path in ENDPOINTS:
        operation = document["paths"][path][method.lower()]
        assert {"apiKey": []} in operation["security"] and {"bearerAuth": []} in operation["security"]
        assert "401" in operation["responses"]
    # The web API's document does not offer what /api/ refuses.
    web = await (await client.get("/api/docs/openapi.json")).json()
    assert set(web["components"]["securitySchemes"]) == {"bearerAuth"}
