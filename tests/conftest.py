"""Fixtures: real PostgreSQL and Redis (TEST_DATABASE_URL / TEST_REDIS_URL, else embedded ones)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.base.settings import Settings
from storage import migrate
from tests.private_redis import REDIS_SERVER, PrivateRedis
from tests.support import create_database, drop_database, unique_email

Client = TestClient[Any, Any]


@pytest.fixture(scope="session")
def backing_services() -> Iterator[tuple[str, str]]:
    """(admin database URL, Redis URL): the configured servers, else embedded ones for the session."""
    db_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if db_url and redis_url:
        yield db_url, redis_url
        return
    from server.local.embedded import EmbeddedPostgres, EmbeddedRedis

    root = Path(tempfile.mkdtemp(prefix="bk-"))
    pg = EmbeddedPostgres.start(root / "pg") if not db_url else None
    rd = EmbeddedRedis.start(root / "redis") if not redis_url else None
    try:
        yield (db_url or (pg.url if pg else "")), (redis_url or (rd.url if rd else ""))
    finally:
        try:
            if rd:
                rd.stop()
            if pg:
                pg.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)  # ~70 MB of cluster files per session otherwise


@pytest.fixture(scope="session")
def database_url(backing_services: tuple[str, str]) -> Iterator[str]:
    """A fresh database for this test session, migrated to head with Alembic."""
    admin_url = backing_services[0]
    name = f"booking_test_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(create_database(admin_url, name))
    migrate.upgrade(url)
    yield url
    asyncio.run(drop_database(admin_url, name))


@pytest.fixture(scope="session")
def redis_url(backing_services: tuple[str, str]) -> str:
    return backing_services[1]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (tests/private_redis.py), stopped afterwards."""
    if REDIS_SERVER is None:
        pytest.skip("needs a redis-server binary")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    # A unique Redis prefix per test keeps rate-limit counters and channels apart.
    return Settings(
        environment="test",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"t{uuid.uuid4().hex[:10]}:",
        auth_rate_per_ip=1000,
        auth_rate_per_email=1000,
    )


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(replace(settings, **overrides)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


Registrar = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def register(client: Client) -> Registrar:
    async def do(
        email: str | None = None, password: str = "correct horse battery", name: str = "Test"
    ) -> dict[str, Any]:
        resp = await client.post(
            "/api/auth/register", json={"email": email or unique_email(), "password": password, "name": name}
        )
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    return do


def auth(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['accessToken']}"}


@pytest.fixture
async def admin(client: Client, register: Registrar, settings: Settings) -> dict[str, Any]:
    """A registered user promoted to admin through the same path as `booking create-admin`."""
    from server.web.keys import AUTH

    email = unique_email("admin")
    await client.app[AUTH].ensure_admin(email=email, password="admin password 123")
    resp = await client.post("/api/auth/login", json={"email": email, "password": "admin password 123"})
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


@pytest.fixture
async def db_conn(client: Client) -> AsyncIterator[Any]:
    from server.web.keys import DB

    async with client.app[DB].connect() as conn:
        yield conn
