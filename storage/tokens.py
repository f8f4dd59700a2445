"""Refresh-token families: single-use tokens, rotation, revocation of a whole family on reuse."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

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


async def start_family(
    conn: AsyncConnection, *, user_id: uuid.UUID, jti: uuid.UUID, expires_at: datetime
) -> uuid.UUID:
    family_id = uuid.uuid4()
    await conn.execute(sa.insert(refresh_families).values(id=family_id, user_id=user_id))
    await conn.execute(sa.insert(refresh_tokens).values(jti=jti, family_id=family_id, expires_at=expires_at))
    return family_id


async def rotate(
    conn: AsyncConnection, *, jti: uuid.UUID, new_jti: uuid.UUID, new_expires_at: datetime
) -> Rotation:
    """Consume `jti` and issue `new_jti` in its family, atomically (the row lock serialises racers)."""
    stmt = (
        sa.select(
            refresh_tokens.c.family_id,
            refresh_tokens.c.used_at,
            refresh_tokens.c.expires_at,
            refresh_families.c.user_id,
            refresh_families.c.revoked_at,
        )
        .join(refresh_families, refresh_families.c.id == refresh_tokens.c.family_id)
        .where(refresh_tokens.c.jti == jti)
        .with_for_update(of=refresh_tokens)
    )
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        return Rotation(RotateOutcome.UNKNOWN)
    if row.revoked_at is not None:
        return Rotation(RotateOutcome.REVOKED, row.user_id)
    if row.used_at is not None:
        await revoke_family(conn, row.family_id, reason="refresh token reused")
        return Rotation(RotateOutcome.REUSED, row.user_id)
    now = (await conn.execute(sa.select(sa.func.now()))).scalar_one()
    if row.expires_at <= now:
        return Rotation(RotateOutcome.EXPIRED, row.user_id)
    await conn.execute(
        sa.update(refresh_tokens).where(refresh_tokens.c.jti == jti).values(used_at=sa.func.now())
    )
    await conn.execute(
        sa.insert(refresh_tokens).values(jti=new_jti, family_id=row.family_id, expires_at=new_expires_at)
    )
    return Rotation(RotateOutcome.ROTATED, row.user_id)


async def family_of(conn: AsyncConnection, jti: uuid.UUID) -> uuid.UUID | None:
    stmt = sa.select(refresh_tokens.c.family_id).where(refresh_tokens.c.jti == jti)
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return value if isinstance(value, uuid.UUID) else None


async def revoke_family(conn: AsyncConnection, family_id: uuid.UUID, *, reason: str) -> None:
    await conn.execute(
        sa.update(refresh_families)
        .where(refresh_families.c.id == family_id, refresh_families.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), revoke_reason=reason)
    )


async def revoke_user_families(conn: AsyncConnection, user_id: uuid.UUID, *, reason: str) -> None:
    await conn.execute(
        sa.update(refresh_families)
        .where(refresh_families.c.user_id == user_id, refresh_families.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), revoke_reason=reason)
    )


async def purge_expired(conn: AsyncConnection, *, expired_before: datetime) -> tuple[int, int]:
    """Delete refresh tokens (used or not) that expired before `expired_before`, then the families left
    without tokens. An unexpired used token is kept: presenting it again must still revoke its family.
    Returns (tokens, families) deleted."""
    tokens = await conn.execute(sa.delete(refresh_tokens).where(refresh_tokens.c.expires_at < expired_before))
    orphaned = ~sa.exists().where(refresh_tokens.c.family_id == refresh_families.c.id)
    families = await conn.execute(sa.delete(refresh_families).where(orphaned))
    return int(tokens.rowcount or 0), int(families.rowcount or 0)
