"""Every migration upgrades and downgrades on a real PostgreSQL, and head matches the tables."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from storage import migrate
from storage.tables import metadata
from tests.support import create_database, drop_database


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def _columns(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
    finally:
        await conn.close()
    return {r["column_name"] for r in rows}


def test_upgrade_downgrade_upgrade(backing_services: tuple[str, str]) -> None:
    admin_url = backing_services[0]
    name = f"booking_mig_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(create_database(admin_url, name))
    try:
        migrate.upgrade(url)
        assert {
            "users",
            "refresh_families",
            "refresh_tokens",
            "audit_log",
            "bookings",
            "idempotency_keys",
            "reminders",
            "notifications",
            "api_keys",
            "webhook_endpoints",
            "webhook_messages",
            "webhook_attempts",
            "calendar_feeds",
        } <= asyncio.run(_tables(url))
        # The newest step removes only the feeds table.
        migrate.downgrade(url, "0010_series")
        tables = asyncio.run(_tables(url))
        assert "calendar_feeds" not in tables and {"booking_series", "bookings"} <= tables
        assert "published_at" in asyncio.run(_columns(url, "notifications"))
        # One step back removes only the webhook tables.
        migrate.downgrade(url, "0006_idempotent_response_json")
        tables = asyncio.run(_tables(url))
        assert not {"webhook_endpoints", "webhook_messages", "webhook_attempts"} & tables
        assert "api_keys" in tables
        # The next gives idempotency_keys.response its jsonb type back.
        migrate.downgrade(url, "0005_api_keys")
        assert "api_keys" in asyncio.run(_tables(url))
        # The next removes only the newest table; the rest of the schema stays.
        migrate.downgrade(url, "0004_notification_outbox")
        tables = asyncio.run(_tables(url))
        assert "api_keys" not in tables and {"users", "reminders", "notifications"} <= tables
        # And the step before drops only the outbox column.
        migrate.downgrade(url, "0003_reminders")
        assert "published_at" not in asyncio.run(_columns(url, "notifications"))
        assert "read_at" in asyncio.run(_columns(url, "notifications"))
        migrate.downgrade(url, "base")
        assert asyncio.run(_tables(url)) <= {"alembic_version"}
        migrate.upgrade(url)
        assert "users" in asyncio.run(_tables(url))
    finally:
        asyncio.run(drop_database(admin_url, name))


async def test_head_matches_the_table_definitions(database_url: str) -> None:
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []
