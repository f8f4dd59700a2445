"""The reminder lifecycle: PostgreSQL holds the intent (in the booking's transaction), Redis a copy.

Due at `start - reminderMinutesBefore`; already past but the booking not started → due now. Moving the
start re-arms it (even after it was sent); `null` minutes, a final status, or a delete cancel it. After
commit the schedule is replaced in Redis; if Redis is down the change still stands and the reconciler
(server/tasks.py) schedules it from PostgreSQL later.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from actors.errors import NotFound
from actors.views import iso
from storage import reminders as store
from storage.bookings import Booking
from storage.reminders import Notification
from storage.tables import ACTIVE_STATUSES

log = logging.getLogger(__name__)


class ReminderSchedule(Protocol):
    """Where due reminders wait to fire (the taskiq Redis schedule source in production)."""

    async def schedule(self, booking_id: uuid.UUID, due_at: datetime) -> None: ...

    async def unschedule(self, booking_id: uuid.UUID) -> None: ...


def due_time(booking: Booking, now: datetime) -> datetime | None:
    """When the reminder for `booking` should fire, or None when it should not."""
    if booking.status not in ACTIVE_STATUSES or booking.reminder_minutes_before is None:
        return None
    if booking.start_time <= now:
        return None
    return max(booking.start_time - timedelta(minutes=booking.reminder_minutes_before), now)


class Reminders:
    """The booking actor's `ReminderHook`."""

    def __init__(
        self,
        schedule: ReminderSchedule,
        *,
        timeout: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._schedule = schedule
        self._timeout = timeout
        self._clock = clock
        # booking id → the due time armed in the transaction (None: cancelled), consumed after commit.
        self._decided: dict[uuid.UUID, datetime | None] = {}

    async def in_transaction(
        self, conn: AsyncConnection, booking: Booking | None, *, booking_id: uuid.UUID
    ) -> None:
        if booking is None:  # deleted: ON DELETE CASCADE already removed the row
            self._decided[booking_id] = None
            return
        now = self._clock()
        due = due_time(booking, now)
        if due is None:
            await store.cancel(conn, booking_id)
            self._decided[booking_id] = None
            return
        current = await store.get_reminder(conn, booking_id)
        if current is not None and current.state == "sent" and current.start_time == booking.start_time:
            self._decided.pop(booking_id, None)  # already reminded for this start; nothing to schedule
            return
        if (
            current is not None
            and current.state == "pending"
            and current.start_time == booking.start_time
            and (current.due_at == due or (due == now and current.due_at <= now))
        ):
            self._decided.pop(booking_id, None)  # unchanged (an edit of other fields): keep the schedule
            return
        await store.arm(
            conn, booking_id=booking_id, user_id=booking.user_id, start_time=booking.start_time, due_at=due
        )
        self._decided[booking_id] = due

    async def after_commit(self, booking: Booking | None, *, booking_id: uuid.UUID) -> None:
        if booking_id not in self._decided:
            return
        due = self._decided.pop(booking_id)
        try:
            async with asyncio.timeout(self._timeout):
                if due is None:
                    await self._schedule.unschedule(booking_id)
                else:
                    await self._schedule.schedule(booking_id, due)
        except Exception as exc:  # any Redis failure or timeout: the booking change stands
            # PostgreSQL holds the intent; the reconciler schedules it once Redis answers again.
            log.warning("reminder for %s not scheduled in Redis (%s); the reconciler will", booking_id, exc)


# --- notifications ------------------------------------------------------------------------------------


def notification_view(n: Notification) -> dict[str, Any]:
    return {
        "id": str(n.id),
        "kind": n.kind,
        "title": n.title,
        "data": n.data,
        "read": n.read_at is not None,
        "readAt": iso(n.read_at) if n.read_at else None,
        "createdAt": iso(n.created_at),
    }


class NotificationService:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_page(
        self, user_id: uuid.UUID, *, unread: bool | None, page: int, limit: int
    ) -> tuple[list[Notification], int]:
        async with self._engine.connect() as conn:
            return await store.list_notifications(
                conn, user_id=user_id, unread=unread, offset=(page - 1) * limit, limit=limit
            )

    async def mark_read(self, user_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
        async with self._engine.begin() as conn:
            found = await store.mark_read(conn, user_id=user_id, notification_id=notification_id)
        if found is None:
            raise NotFound("notification not found")
        return found
