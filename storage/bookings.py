"""Bookings, idempotency keys and the audit log: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.tables import ACTIVE_STATUSES, OVERLAP_CONSTRAINT, audit_log, bookings, idempotency_keys


@dataclass(frozen=True, slots=True)
class Booking:
    id: uuid.UUID
    user_id: uuid.UUID
    user_seq: int
    title: str
    description: str | None
    location: str | None
    notes: str | None
    start_time: datetime
    end_time: datetime
    status: str
    reminder_minutes_before: int | None
    reminder_sent_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready copy for the audit log."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True, slots=True)
class ListFilter:
    user_id: uuid.UUID | None  # None: every user's (admin)
    start_from: datetime | None = None
    start_to: datetime | None = None
    status: str | None = None


def _booking(row: Any) -> Booking:
    return Booking(**row._asdict())


async def insert_booking(conn: AsyncConnection, values: dict[str, Any]) -> Booking | None:
    """Insert unless it overlaps an active booking of the same user (then None, and no deadlock)."""
    stmt = (
        pg_insert(bookings)
        .values(**values)
        .on_conflict_do_nothing(constraint=OVERLAP_CONSTRAINT)
        .returning(*bookings.c)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _booking(row) if row else None


async def find_overlap(
    conn: AsyncConnection, *, user_seq: int, start: datetime, end: datetime, exclude: uuid.UUID | None = None
) -> uuid.UUID | None:
    stmt = (
        sa.select(bookings.c.id)
        .where(
            bookings.c.user_seq == user_seq,
            bookings.c.status.in_(ACTIVE_STATUSES),
            bookings.c.start_time < end,
            bookings.c.end_time > start,
        )
        .order_by(bookings.c.start_time)
        .limit(1)
    )
    if exclude is not None:
        stmt = stmt.where(bookings.c.id != exclude)
    value = (await conn.execute(stmt)).scalar_one_or_none()
    return value if isinstance(value, uuid.UUID) else None


async def get_booking(
    conn: AsyncConnection, booking_id: uuid.UUID, *, for_update: bool = False
) -> Booking | None:
    stmt = sa.select(bookings).where(bookings.c.id == booking_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).one_or_none()
    return _booking(row) if row else None


async def update_booking(conn: AsyncConnection, booking_id: uuid.UUID, values: dict[str, Any]) -> Booking:
    stmt = (
        sa.update(bookings)
        .where(bookings.c.id == booking_id)
        .values(**values, version=bookings.c.version + 1, updated_at=sa.func.now())
        .returning(*bookings.c)
    )
    return _booking((await conn.execute(stmt)).one())


async def delete_booking(conn: AsyncConnection, booking_id: uuid.UUID) -> None:
    await conn.execute(sa.delete(bookings).where(bookings.c.id == booking_id))


def _filtered(stmt: Any, f: ListFilter) -> Any:
    if f.user_id is not None:
        stmt = stmt.where(bookings.c.user_id == f.user_id)
    if f.start_from is not None:
        stmt = stmt.where(bookings.c.start_time >= f.start_from)
    if f.start_to is not None:
        stmt = stmt.where(bookings.c.start_time < f.start_to)
    if f.status is not None:
        stmt = stmt.where(bookings.c.status == f.status)
    return stmt


async def list_bookings(
    conn: AsyncConnection, f: ListFilter, *, offset: int, limit: int
) -> tuple[list[Booking], int]:
    total = (await conn.execute(_filtered(sa.select(sa.func.count()).select_from(bookings), f))).scalar_one()
    if offset >= total:
        return [], int(total)
    stmt = _filtered(sa.select(bookings), f).order_by(bookings.c.start_time, bookings.c.id)
    rows = await conn.execute(stmt.offset(offset).limit(limit))
    return [_booking(r) for r in rows], int(total)


async def upcoming(
    conn: AsyncConnection, *, user_id: uuid.UUID | None, now: datetime, limit: int
) -> list[Booking]:
    stmt = _filtered(sa.select(bookings), ListFilter(user_id=user_id)).where(
        bookings.c.start_time >= now, bookings.c.status.in_(ACTIVE_STATUSES)
    )
    rows = await conn.execute(stmt.order_by(bookings.c.start_time, bookings.c.id).limit(limit))
    return [_booking(r) for r in rows]


async def past(
    conn: AsyncConnection, *, user_id: uuid.UUID | None, now: datetime, limit: int
) -> list[Booking]:
    stmt = _filtered(sa.select(bookings), ListFilter(user_id=user_id)).where(bookings.c.end_time <= now)
    rows = await conn.execute(stmt.order_by(bookings.c.start_time.desc(), bookings.c.id.desc()).limit(limit))
    return [_booking(r) for r in rows]


# --- idempotency ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredResponse:
    request_hash: str
    status_code: int
    response: dict[str, Any]


async def get_idempotent(conn: AsyncConnection, *, user_id: uuid.UUID, key: str) -> StoredResponse | None:
    stmt = sa.select(
        idempotency_keys.c.request_hash, idempotency_keys.c.status_code, idempotency_keys.c.response
    ).where(idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key)
    row = (await conn.execute(stmt)).one_or_none()
    return StoredResponse(row.request_hash, row.status_code, row.response) if row else None


async def put_idempotent(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    key: str,
    request_hash: str,
    status_code: int,
    response: dict[str, Any],
) -> bool:
    """False when another request took the key first (it blocks until that one commits)."""
    stmt = (
        pg_insert(idempotency_keys)
        .values(
            user_id=user_id, key=key, request_hash=request_hash, status_code=status_code, response=response
        )
        .on_conflict_do_nothing()
        .returning(idempotency_keys.c.key)
    )
    return (await conn.execute(stmt)).one_or_none() is not None


async def purge_idempotency(conn: AsyncConnection, *, older_than: datetime) -> int:
    result = await conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than))
    return int(result.rowcount or 0)


# --- audit ----------------------------------------------------------------------------------------


async def audit(
    conn: AsyncConnection,
    *,
    actor_id: uuid.UUID | None,
    action: str,
    entity_id: uuid.UUID,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    entity: str = "booking",
) -> None:
    await conn.execute(
        sa.insert(audit_log).values(
            actor_id=actor_id, action=action, entity=entity, entity_id=entity_id, before=before, after=after
        )
    )


async def audit_entries(
    conn: AsyncConnection, *, entity_id: uuid.UUID, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    where = audit_log.c.entity_id == entity_id
    total = (await conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(where))).scalar_one()
    rows = await conn.execute(
        sa.select(audit_log).where(where).order_by(audit_log.c.id).offset(offset).limit(limit)
    )
    return [dict(r._asdict()) for r in rows], int(total)
