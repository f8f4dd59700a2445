"""Role and status changes reach every web process at once, although each caches user rows.

Two real web processes with a cache lifetime far longer than the test (AUTH_CACHE_SECONDS=300), so a
refusal on the other process can only come from the cross-process invalidation, never from expiry.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.processes import BOOKING, ROOT, WebProcess, start_web, stop
from tests.support import unique_email

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ADMIN_PASSWORD = "admin password cache"


@pytest.fixture(scope="module")
def webs(database_url: str, redis_url: str) -> Iterator[tuple[WebProcess, WebProcess, str]]:
    admin_email = unique_email("cache-admin")
    env = {
        "NODE_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"uc{uuid.uuid4().hex[:10]}:",
        "AUTH_RATE_LIMIT_PER_IP": "100000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "100000",
        "API_RATE_LIMIT_PER_USER": "100000",
        "AUTH_CACHE_SECONDS": "300",
    }
    subprocess.run(
        [str(BOOKING), "create-admin", "--email", admin_email],
        cwd=ROOT,
        env={**os.environ, **env, "ADMIN_PASSWORD": ADMIN_PASSWORD},
        check=True,
        capture_output=True,
        timeout=60,
    )
    a, b = start_web(2, env)
    try:
        yield a, b, admin_email
    finally:
        exits = stop([a, b])
        assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw: Any) -> int:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw) as resp:
        await resp.read()
        return resp.status


async def until_status(http: aiohttp.ClientSession, url: str, token: str, want: int, within: float) -> float:
    """Seconds until GET `url` answers `want` (fails the test after `within`)."""
    started = time.monotonic()
    while (status := await call(http, "GET", url, token)) != want:
        assert time.monotonic() - started < within, f"{url} still answers {status}, not {want}"
    return time.monotonic() - started


async def test_suspension_and_promotion_on_one_process_hold_at_once_on_the_other(
    webs: tuple[WebProcess, WebProcess, str], http: aiohttp.ClientSession
) -> None:
    a, b, admin_email = webs
    async with http.post(
        f"{a.base_url}/api/auth/login", json={"email": admin_email, "password": ADMIN_PASSWORD}
    ) as resp:
        admin = (await resp.json())["accessToken"]
    body = {"email": unique_email("cached"), "password": "correct horse battery", "name": "C"}
    async with http.post(f"{a.base_url}/api/auth/register", json=body) as resp:
        session = await resp.json()
    token, user_id = session["accessToken"], session["user"]["id"]

    # Both processes have now cached the user as an active, plain user.
    for web in (a, b):
        assert await call(http, "GET", f"{web.base_url}/api/auth/me", token) == 200
        assert await call(http, "GET", f"{web.base_url}/api/users", token) == 403

    # Promoted on A: B lets the same token into an admin route.
    assert (
        await call(http, "PATCH", f"{a.base_url}/api/users/{user_id}", admin, json={"role": "admin"}) == 200
    )
    await until_status(http, f"{b.base_url}/api/users", token, 200, within=3.0)

    # Suspended on A: B refuses the same token.
    patch = {"status": "suspended", "role": "user"}
    assert await call(http, "PATCH", f"{a.base_url}/api/users/{user_id}", admin, json=patch) == 200
    await until_status(http, f"{b.base_url}/api/auth/me", token, 401, within=3.0)
    assert await call(http, "GET", f"{a.base_url}/api/auth/me", token) == 401
