"""Refresh-token families: single-use tokens, rotation, revocation of a whole family on reuse."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import sqlalchemy as sa

from storage.db import Connection, P, Query
from storage.tables import refresh_families, refresh_tokens


class RotateOutcome(Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    REUSED = "reused"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: RotateOutcome
    user_id: uuid.UUID | None = None


_NEW_FAMILY = Query(sa.insert(refresh_families).values(id=P("id"), user_id=P("user_id")))
_NEW_TOKEN = Query(
    sa.insert(refresh_tokens).values(jti=P("jti"), family_id=P("family_id"), expires_at=P("expires_at"))
)
_LOCK_TOKEN = Query(
    sa.select(
        refresh_tokens.c.family_id,
        refresh_tokens.c.used_at,
        refresh_tokens.c.expires_at,
        refresh_families.c.user_id,
        refresh_families.c.revoked_at,
        (refresh_tokens.c.expires_at <= sa.func.now()).label("expired"),
    )
    .join(refresh_families, refresh_families.c.id == refresh_tokens.c.family_id)
    .where(refresh_tokens.c.jti == P("jti"))
    .with_for_update(of=refresh_tokens)
)
_USE_TOKEN = Query(
    sa.update(refresh_tokens).where(refresh_tokens.c.jti == P("jti")).values(used_at=sa.func.now())
)
_FAMILY_OF = Query(sa.select(refresh_tokens.c.family_id).where(refresh_tokens.c.jti == P("jti")))
_REVOKE_FAMILY = Query(
    sa.update(refresh_families)
    .where(refresh_families.c.id == P("id"), refresh_families.c.revoked_at.is_(None))
    .values(revoked_at=sa.func.now(), revoke_reason=P("reason"))
)
_REVOKE_USER = Query(
    sa.update(refresh_families)
    .where(refresh_families.c.user_id == P("user_id"), refresh_families.c.revoked_at.is_(None))
    .values(revoked_at=sa.func.now(), revoke_reason=P("reason"))
)
_PURGE_TOKENS = Query(sa.delete(refresh_tokens).where(refresh_tokens.c.expires_at < P("before")))
_PURGE_FAMILIES = Query(
    sa.delete(refresh_families).where(~sa.exists().where(refresh_tokens.c.family_id == refresh_families.c.id))
)


async def start_family(
    conn: Connection, *, user_id: uuid.UUID, jti: uuid.UUID, expires_at: datetime
) -> uuid.UUID:
    family_id = uuid.uuid4()
    await _NEW_FAMILY.execute(conn, id=family_id, user_id=user_id)
    await _NEW_TOKEN.execute(conn, jti=jti, family_id=family_id, expires_at=expires_at)
    return family_id


async def rotate(
    conn: Connection, *, jti: uuid.UUID, new_jti: uuid.UUID, new_expires_at: datetime
) -> Rotation:
    """Consume `jti` and issue `new_jti` in its family, atomically (the row lock serialises racers)."""
    row = await _LOCK_TOKEN.fetchrow(conn, jti=jti)
    if row is None:
        return Rotation(RotateOutcome.UNKNOWN)
    if row["revoked_at"] is not None:
        return Rotation(RotateOutcome.REVOKED, row["user_id"])
    if row["used_at"] is not None:
        await revoke_family(conn, row["family_id"], reason="refresh token reused")
        return Rotation(RotateOutcome.REUSED, row["user_id"])
    if row["expired"]:
        return Rotation(RotateOutcome.EXPIRED, row["user_id"])
    await _USE_TOKEN.execute(conn, jti=jti)
    await _NEW_TOKEN.execute(conn, jti=new_jti, family_id=row["family_id"], expires_at=new_expires_at)
    return Rotation(RotateOutcome.ROTATED, row["user_id"])


async def family_of(conn: Connection, jti: uuid.UUID) -> uuid.UUID | None:
    value = await _FAMILY_OF.fetchval(conn, jti=jti)
    return value if isinstance(value, uuid.UUID) else None


async def revoke_family(conn: Connection, family_id: uuid.UUID, *, reason: str) -> None:
    await _REVOKE_FAMILY.execute(conn, id=family_id, reason=reason)


async def revoke_user_families(conn: Connection, user_id: uuid.UUID, *, reason: str) -> None:
    await _REVOKE_USER.execute(conn, user_id=user_id, reason=reason)


async def purge_expired(conn: Connection, *, expired_before: datetime) -> tuple[int, int]:
    """Delete refresh tokens (used or not) that expired before `expired_before`, then the families left
    without tokens. An unexpired used token is kept: presenting it again must still revoke its family.
    Returns (tokens, families) deleted."""
    tokens = await _PURGE_TOKENS.execute(conn, before=expired_before)
    families = await _PURGE_FAMILIES.execute(conn)
    return tokens, families
