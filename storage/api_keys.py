"""API keys: rows in, plain dataclasses out. Never sees a secret, only its hash."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import sqlalchemy as sa

from storage.db import Connection, P, Query, Record
from storage.tables import api_keys


class DuplicatePrefix(Exception):
    """Another key already has this prefix (a 48-bit random collision: draw again)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def state_at(self, now: datetime) -> str:
        """ "active", "expired" or "revoked"."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.expires_at is None or now < self.expires_at else "expired"


_PUBLIC = [c for c in api_keys.c if c.name != "secret_hash"]


def _key(row: Record) -> ApiKey:
    return ApiKey(**{c.name: row[c.name] for c in _PUBLIC})


_INSERT = Query(
    sa.insert(api_keys)
    .values(name=P("name"), prefix=P("prefix"), secret_hash=P("secret_hash"), expires_at=P("expires_at"))
    .returning(*_PUBLIC)
)
_BY_PREFIX = Query(sa.select(api_keys).where(api_keys.c.prefix == P("prefix", sa.Text)))
_ALL = Query(sa.select(*_PUBLIC).order_by(api_keys.c.created_at, api_keys.c.id))
# Revoking twice keeps the first time.
_REVOKE = Query(
    sa.update(api_keys)
    .where(api_keys.c.prefix == P("prefix", sa.Text))
    .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
    .returning(*_PUBLIC)
)
# The database side of the last-use throttle: a process that has not touched the key lately still writes
# only when no process has within `interval`, so N job processes do not add up to N writes a minute.
_TOUCH = Query(
    sa.update(api_keys)
    .where(
        api_keys.c.id == P("id"),
        sa.or_(
            api_keys.c.last_used_at.is_(None),
            api_keys.c.last_used_at < sa.func.now() - P("interval", sa.Interval),
        ),
    )
    .values(last_used_at=sa.func.now())
)


async def insert_api_key(
    conn: Connection, *, name: str, prefix: str, secret_hash: str, expires_at: datetime | None
) -> ApiKey:
    try:
        row = await _INSERT.fetchrow(
            conn, name=name, prefix=prefix, secret_hash=secret_hash, expires_at=expires_at
        )
    except asyncpg.UniqueViolationError as exc:
        raise DuplicatePrefix(prefix) from exc
    assert row is not None  # noqa: S101 (INSERT ... RETURNING returns the row)
    return _key(row)


async def get_by_prefix(conn: Connection, prefix: str) -> tuple[ApiKey, str] | None:
    """The key and its stored secret hash."""
    row = await _BY_PREFIX.fetchrow(conn, prefix=prefix)
    return (_key(row), row["secret_hash"]) if row else None


async def list_api_keys(conn: Connection) -> list[ApiKey]:
    return [_key(row) for row in await _ALL.fetch(conn)]


async def revoke(conn: Connection, prefix: str) -> ApiKey | None:
    row = await _REVOKE.fetchrow(conn, prefix=prefix)
    return _key(row) if row else None


async def touch(conn: Connection, key_id: uuid.UUID, *, interval: timedelta) -> bool:
    """Record a use, unless one was recorded within `interval`; whether it wrote."""
    return await _TOUCH.execute(conn, id=key_id, interval=interval) == 1
