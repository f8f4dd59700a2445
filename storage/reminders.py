"""Reminders and notifications: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.bookings import Booking, _booking
from storage.tables import bookings, notifications, reminders


@dataclass(frozen=True, slots=True)
class Reminder:
    booking_id: uuid.UUID
    user_id: uuid.UUID
    start_time: datetime
    due_at: datetime
    state: str
    sent_at: datetime | None
    attempts: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Notification:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    title: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


async def get_reminder(conn: AsyncConnection, booking_id: uuid.UUID) -> Reminder | None:
    row = (await conn.execute(sa.select(reminders).where(reminders.c.booking_id == booking_id))).one_or_none()
    return Reminder(**row._asdict()) if row else None


async def arm(
    conn: AsyncConnection,
    *,
    booking_id: uuid.UUID,
    user_id: uuid.UUID,
    start_time: datetime,
    due_at: datetime,
) -> None:
    """Insert or reset the reminder to pending at `due_at`."""
    values = {
        "booking_id": booking_id,
        "user_id": user_id,
        "start_time": start_time,
        "due_at": due_at,
        "state": "pending",
        "sent_at": None,
    }
    stmt = pg_insert(reminders).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[reminders.c.booking_id],
        set_={**{k: stmt.excluded[k] for k in values if k != "booking_id"}, "updated_at": sa.func.now()},
    )
    await conn.execute(stmt)


async def cancel(conn: AsyncConnection, booking_id: uuid.UUID) -> None:
    await conn.execute(
        sa.update(reminders)
        .where(reminders.c.booking_id == booking_id, reminders.c.state == "pending")
        .values(state="cancelled", updated_at=sa.func.now())
    )


async def lock_booking(conn: AsyncConnection, booking_id: uuid.UUID) -> Booking | None:
    """The booking row, locked: the same lock order (booking, then reminder) as the booking actor."""
    stmt = sa.select(bookings).where(bookings.c.id == booking_id).with_for_update()
    row = (await conn.execute(stmt)).one_or_none()
    return _booking(row) if row else None


async def claim(conn: AsyncConnection, *, booking_id: uuid.UUID, due_at: datetime) -> bool:
    """Mark the pending reminder for exactly this due time as sent; False when someone else did, or it
    moved, or it was cancelled. The row lock makes concurrent claims wait and then see `sent`."""
    stmt = (
        sa.update(reminders)
        .where(
            reminders.c.booking_id == booking_id,
            reminders.c.state == "pending",
            reminders.c.due_at == due_at,
        )
        .values(
            state="sent",
            sent_at=sa.func.now(),
            attempts=reminders.c.attempts + 1,
            updated_at=sa.func.now(),
        )
        .returning(reminders.c.sent_at)
    )
    return (await conn.execute(stmt)).one_or_none() is not None


async def mark_booking_reminded(conn: AsyncConnection, booking_id: uuid.UUID) -> None:
    await conn.execute(
        sa.update(bookings).where(bookings.c.id == booking_id).values(reminder_sent_at=sa.func.now())
    )


async def pending_before(
    conn: AsyncConnection, *, until: datetime, limit: int
) -> list[tuple[uuid.UUID, datetime]]:
    """Pending reminders due before `until`, earliest first (served by the partial index)."""
    stmt = (
        sa.select(reminders.c.booking_id, reminders.c.due_at)
        .where(reminders.c.state == "pending", reminders.c.due_at < until)
        .order_by(reminders.c.due_at)
        .limit(limit)
    )
    return [(r.booking_id, r.due_at) for r in await conn.execute(stmt)]


async def count_pending(conn: AsyncConnection) -> int:
    stmt = sa.select(sa.func.count()).select_from(reminders).where(reminders.c.state == "pending")
    return int((await conn.execute(stmt)).scalar_one())


# --- notifications -------------------------------------------------------------------------------------


def _notification(row: Any) -> Notification:
    return Notification(**row._asdict())


async def add_notification(
    conn: AsyncConnection, *, user_id: uuid.UUID, kind: str, title: str, data: dict[str, Any]
) -> Notification:
    stmt = (
        sa.insert(notifications)
        .values(user_id=user_id, kind=kind, title=title, data=data)
        .returning(*notifications.c)
    )
    return _notification((await conn.execute(stmt)).one())


async def list_notifications(
    conn: AsyncConnection, *, user_id: uuid.UUID, unread: bool | None, offset: int, limit: int
) -> tuple[list[Notification], int]:
    where = [notifications.c.user_id == user_id]
    if unread is True:
        where.append(notifications.c.read_at.is_(None))
    elif unread is False:
        where.append(notifications.c.read_at.is_not(None))
    total = (
        await conn.execute(sa.select(sa.func.count()).select_from(notifications).where(*where))
    ).scalar_one()
    stmt = (
        sa.select(notifications)
        .where(*where)
        .order_by(notifications.c.created_at.desc(), notifications.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [_notification(r) for r in await conn.execute(stmt)], int(total)


async def mark_read(
    conn: AsyncConnection, *, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification | None:
    """Idempotent: a read notification keeps its first read time. None when missing or someone else's."""
    stmt = (
        sa.update(notifications)
        .where(notifications.c.id == notification_id, notifications.c.user_id == user_id)
        .values(read_at=sa.func.coalesce(notifications.c.read_at, sa.func.now()))
        .returning(*notifications.c)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _notification(row) if row else None


async def purge_read_notifications(conn: AsyncConnection, *, read_before: datetime) -> int:
    """Delete notifications read before `read_before`; unread ones are kept whatever their age."""
    stmt = sa.delete(notifications).where(
        notifications.c.read_at.is_not(None), notifications.c.read_at < read_before
    )
    return int((await conn.execute(stmt)).rowcount or 0)
