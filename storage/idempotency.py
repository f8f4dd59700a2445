"""Idempotency keys: a create's key claimed in its transaction, its response stored for a replay, old
keys purged: queries only, no rules (actors/idempotency.py has those)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from storage.db import Connection, P, Query
from storage.tables import idempotency_keys


@dataclass(frozen=True, slots=True)
class StoredResponse:
    request_hash: str
    status_code: int
    response: dict[str, Any]


_CLAIM_KEY = Query(
    pg_insert(idempotency_keys)
    .values(
        user_id=P("user_id"),
        key=P("key"),
        request_hash=P("request_hash"),
        status_code=0,
        response=sa.text("'{}'::jsonb"),
    )
    .on_conflict_do_nothing()
    .returning(idempotency_keys.c.key)
)
_GET_KEY = Query(
    sa.select(
        idempotency_keys.c.request_hash, idempotency_keys.c.status_code, idempotency_keys.c.response
    ).where(idempotency_keys.c.user_id == P("user_id"), idempotency_keys.c.key == P("key"))
)
_STORE_KEY = Query(
    sa.update(idempotency_keys)
    .where(idempotency_keys.c.user_id == P("user_id"), idempotency_keys.c.key == P("key"))
    .values(status_code=P("status_code"), response=P("response", type_=idempotency_keys.c.response.type))
)
_PURGE_KEYS = Query(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < P("before")))


async def claim_idempotency_key(conn: Connection, *, user_id: uuid.UUID, key: str, request_hash: str) -> bool:
    """Take the key for this transaction; False when it is already taken. A concurrent claimant of the
    same key waits here until the first one commits (then sees its response) or rolls back (then wins)."""
    return await _CLAIM_KEY.fetchval(conn, user_id=user_id, key=key, request_hash=request_hash) is not None


async def get_idempotent(conn: Connection, *, user_id: uuid.UUID, key: str) -> StoredResponse | None:
    row = await _GET_KEY.fetchrow(conn, user_id=user_id, key=key)
    return StoredResponse(row["request_hash"], row["status_code"], row["response"]) if row else None


async def store_idempotent(
    conn: Connection, *, user_id: uuid.UUID, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await _STORE_KEY.execute(conn, user_id=user_id, key=key, status_code=status_code, response=response)


async def purge_idempotency(conn: Connection, *, older_than: datetime) -> int:
    return await _PURGE_KEYS.execute(conn, before=older_than)
