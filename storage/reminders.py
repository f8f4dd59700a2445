"""Reminders and notifications: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from storage.bookings import Booking, _booking
from storage.db import Connection, P, Query, Record, page_of, paged
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
    enqueued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    title: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None
    published_at: datetime | None = None


_GET = Query(sa.select(reminders).where(reminders.c.booking_id == P("booking_id")))


async def get_reminder(conn: Connection, booking_id: uuid.UUID) -> Reminder | None:
    row = await _GET.fetchrow(conn, booking_id=booking_id)
    return Reminder(**row) if row else None


def _arm_statement() -> Any:
    armed = ("user_id", "start_time", "due_at")
    stmt = pg_insert(reminders).values(
        booking_id=P("booking_id"), **{k: P(k) for k in armed}, state="pending", sent_at=None
    )
    return stmt.on_conflict_do_update(
        index_elements=[reminders.c.booking_id],
        set_={
            **{k: stmt.excluded[k] for k in (*armed, "state", "sent_at")},
            "updated_at": sa.func.now(),
            "enqueued_at": None,  # re-armed: the scheduler takes it afresh
        },
    )


_ARM = Query(_arm_statement())
_CANCEL = Query(
    sa.update(reminders)
    .where(reminders.c.booking_id == P("booking_id"), reminders.c.state == "pending")
    .values(state="cancelled", updated_at=sa.func.now())
)


async def arm(
    conn: Connection, *, booking_id: uuid.UUID, user_id: uuid.UUID, start_time: datetime, due_at: datetime
) -> None:
    """Insert or reset the reminder to pending at `due_at`."""
    await _ARM.execute(conn, booking_id=booking_id, user_id=user_id, start_time=start_time, due_at=due_at)


async def cancel(conn: Connection, booking_id: uuid.UUID) -> None:
    await _CANCEL.execute(conn, booking_id=booking_id)


_LOCK_BOOKING = Query(sa.select(bookings).where(bookings.c.id == P("id")).with_for_update())


async def lock_booking(conn: Connection, booking_id: uuid.UUID) -> Booking | None:
    """The booking row, locked: the same lock order (booking, then reminder) as the booking actor."""
    row = await _LOCK_BOOKING.fetchrow(conn, id=booking_id)
    return _booking(row) if row else None


_CLAIM = Query(
    sa.update(reminders)
    .where(
        reminders.c.booking_id == P("booking_id"),
        reminders.c.state == "pending",
        reminders.c.due_at == P("due_at"),
    )
    .values(state="sent", sent_at=sa.func.now(), attempts=reminders.c.attempts + 1, updated_at=sa.func.now())
    .returning(reminders.c.sent_at)
)


async def claim(conn: Connection, *, booking_id: uuid.UUID, due_at: datetime) -> bool:
    """Mark the pending reminder for exactly this due time as sent; False when someone else did, or it
    moved, or it was cancelled. The row lock makes concurrent claims wait and then see `sent`."""
    return await _CLAIM.fetchrow(conn, booking_id=booking_id, due_at=due_at) is not None


_MARK_REMINDED = Query(
    sa.update(bookings)
    .where(bookings.c.id == P("id"))
    .values(reminder_sent_at=sa.func.now(), version=bookings.c.version + 1, updated_at=sa.func.now())
    .returning(*bookings.c)
)


async def mark_booking_reminded(conn: Connection, booking_id: uuid.UUID) -> Booking | None:
    """Record the send on the booking (a new version: its representation, and so its ETag, changed);
    the booking as it now is."""
    row = await _MARK_REMINDED.fetchrow(conn, id=booking_id)
    return _booking(row) if row else None


# --- the schedule (server/worker/tasks.py ReminderScheduler) -------------------------------------

# A row counts as enqueued at `enqueued_at`, or, when it was armed already due (its due time within
# `lead` of its arm), at its arm: the web process put that one on the stream itself after the commit.
_TAKE_DUE = Query(
    sa.text(
        """
    WITH due AS (
        SELECT booking_id FROM reminders
        WHERE state = 'pending' AND due_at < :until
          AND COALESCE(
                enqueued_at,
                CASE WHEN due_at <= updated_at + :lead THEN updated_at END,
                '-infinity'
              ) < :stale
        ORDER BY due_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE reminders r SET enqueued_at = greatest(r.due_at - :lead, :now)
    FROM due WHERE r.booking_id = due.booking_id
    RETURNING r.booking_id, r.due_at
    """
    ).bindparams(
        sa.bindparam("until", type_=sa.DateTime(timezone=True)),
        sa.bindparam("stale", type_=sa.DateTime(timezone=True)),
        sa.bindparam("now", type_=sa.DateTime(timezone=True)),
        sa.bindparam("lead", type_=sa.Interval()),
        sa.bindparam("limit", type_=sa.Integer()),
    )
)
_RELEASE = Query(
    sa.update(reminders)
    .where(
        reminders.c.booking_id == P("booking_id"),
        reminders.c.due_at == P("due_at"),
        reminders.c.state == "pending",
    )
    .values(enqueued_at=sa.literal_column("'-infinity'::timestamptz"))
)
# Exact up to the cap, from the schedule's partial index; beyond it the index's size estimate.
_COUNT_PENDING = Query(
    sa.text(
        """
    SELECT (SELECT count(*) FROM (
              SELECT 1 FROM reminders WHERE state = 'pending' LIMIT :cap
            ) capped) AS exact,
           (SELECT reltuples FROM pg_class WHERE relname = 'ix_reminders_schedule') AS estimate
    """
    ).bindparams(sa.bindparam("cap", type_=sa.Integer()))
)


async def take_due(
    conn: Connection,
    *,
    now: datetime,
    until: datetime,
    lead: timedelta,
    lease: timedelta,
    limit: int,
) -> list[tuple[uuid.UUID, datetime]]:
    """Take the pending reminders due before `until` that nobody enqueued within `lease` (never, or
    their message was lost), earliest first, and mark them enqueued at `due_at - lead` (or now). The
    rows are locked with SKIP LOCKED for the statement: two schedulers never take the same row."""
    rows = await _TAKE_DUE.fetch(conn, now=now, until=until, lead=lead, stale=now - lease, limit=limit)
    return sorted(((r["booking_id"], r["due_at"]) for r in rows), key=lambda r: r[1])


async def release(conn: Connection, *, booking_id: uuid.UUID, due_at: datetime) -> None:
    """Its enqueue failed: the next tick takes it again (its lease is made expired)."""
    await _RELEASE.execute(conn, booking_id=booking_id, due_at=due_at)


async def count_pending(conn: Connection, *, cap: int = 10_000) -> int:
    """The pending reminders: exact up to `cap` (a bounded read of the partial index), the planner's
    estimate of the index's size beyond (refreshed by autovacuum/ANALYZE): no O(n) count per call."""
    row = await _COUNT_PENDING.fetchrow(conn, cap=cap)
    if row is None:
        return 0
    exact = int(row["exact"])
    return exact if exact < cap else max(exact, int(row["estimate"] or 0))


# --- notifications -------------------------------------------------------------------------------------


def _notification(row: Record | dict[str, Any]) -> Notification:
    return Notification(**row)


_ADD_NOTIFICATION = Query(
    sa.insert(notifications)
    .values(user_id=P("user_id"), kind=P("kind"), title=P("title"), data=P("data", notifications.c.data.type))
    .returning(*notifications.c)
)


async def add_notification(
    conn: Connection, *, user_id: uuid.UUID, kind: str, title: str, data: dict[str, Any]
) -> Notification:
    row = await _ADD_NOTIFICATION.fetchrow(conn, user_id=user_id, kind=kind, title=title, data=data)
    if row is None:
        raise LookupError("INSERT ... RETURNING returned no row")
    return _notification(row)


@cache
def _notifications_page(unread: bool | None) -> Any:
    where = [notifications.c.user_id == P("user_id")]
    if unread is True:
        where.append(notifications.c.read_at.is_(None))
    elif unread is False:
        where.append(notifications.c.read_at.is_not(None))
    return paged(
        notifications, where=where, order_by=[notifications.c.created_at.desc(), notifications.c.id.desc()]
    )


async def list_notifications(
    conn: Connection, *, user_id: uuid.UUID, unread: bool | None, offset: int, limit: int
) -> tuple[list[Notification], int]:
    total, rows = await page_of(
        _notifications_page(unread), conn, user_id=user_id, offset=offset, limit=limit
    )
    return [_notification(r) for r in rows], total


_MARK_READ = Query(
    sa.update(notifications)
    .where(notifications.c.id == P("id"), notifications.c.user_id == P("user_id"))
    .values(read_at=sa.func.coalesce(notifications.c.read_at, sa.func.now()))
    .returning(*notifications.c)
)
_PURGE_READ = Query(
    sa.delete(notifications).where(
        notifications.c.read_at.is_not(None), notifications.c.read_at < P("before")
    )
)


async def mark_read(
    conn: Connection, *, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification | None:
    """Idempotent: a read notification keeps its first read time. None when missing or someone else's."""
    row = await _MARK_READ.fetchrow(conn, id=notification_id, user_id=user_id)
    return _notification(row) if row else None


async def purge_read_notifications(conn: Connection, *, read_before: datetime) -> int:
    """Delete notifications read before `read_before`; unread ones are kept whatever their age."""
    return await _PURGE_READ.execute(conn, before=read_before)


# --- the live event's outbox ---------------------------------------------------------------------------

_MARK_PUBLISHED = Query(
    sa.update(notifications)
    .where(notifications.c.id == P("id"), notifications.c.published_at.is_(None))
    .values(published_at=sa.func.now())
)


async def mark_published(conn: Connection, notification_id: uuid.UUID) -> None:
    await _MARK_PUBLISHED.execute(conn, id=notification_id)


_UNPUBLISHED = Query(
    sa.select(notifications)
    .where(
        notifications.c.published_at.is_(None),
        notifications.c.created_at < P("before"),
        notifications.c.kind == "booking.reminder",  # the only kind with a live event to resend
    )
    .order_by(notifications.c.created_at)
    .limit(P("limit"))
    .with_for_update(skip_locked=True)
)


async def lock_unpublished(conn: Connection, *, before: datetime, limit: int) -> list[Notification]:
    """Notifications whose live event never reached Redis, oldest first, locked for this transaction
    (SKIP LOCKED: two schedulers never republish the same one)."""
    return [_notification(r) for r in await _UNPUBLISHED.fetch(conn, before=before, limit=limit)]
