"""The reminder lifecycle: PostgreSQL holds the intent (in the booking's transaction), Redis a copy.

Due at `start - reminderMinutesBefore`; already past but the booking not started → due now. Moving the
start re-arms it (even after it was sent); `null` minutes, a final status, or a delete cancel it. After
commit the schedule is replaced in Redis; if Redis is down the change still stands and the reconciler
(server/worker/tasks.py) schedules it from PostgreSQL later.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from actors.errors import NotFound
from actors.views import iso
from storage import reminders as store
from storage.bookings import Booking
from storage.db import Connection, Database
from storage.reminders import Notification
from storage.tables import ACTIVE_STATUSES

log = logging.getLogger(__name__)


class ReminderSchedule(Protocol):
    """Where due reminders wait to fire: the taskiq Redis schedule source, behind the web process's
    RedisGate in production (server/bus/redisgate.py), which bounds each call in time."""

    async def schedule(self, booking_id: uuid.UUID, due_at: datetime, *, fresh: bool = False) -> None: ...

    async def unschedule(self, booking_id: uuid.UUID) -> None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What the Redis copy must become once the booking's transaction commits."""

    booking_id: uuid.UUID
    due_at: datetime | None  # None: unschedule
    fresh: bool = False  # a new booking: Redis cannot hold an older schedule for it


def due_for(*, status: str, minutes: int | None, start: datetime, now: datetime) -> datetime | None:
    """When the reminder of a booking should fire, or None when it should not."""
    if status not in ACTIVE_STATUSES or minutes is None or start <= now:
        return None
    return max(start - timedelta(minutes=minutes), now)


def due_time(booking: Booking, now: datetime) -> datetime | None:
    return due_for(
        status=booking.status, minutes=booking.reminder_minutes_before, start=booking.start_time, now=now
    )


class Reminders:
    """The booking actor's `ReminderHook`: decides in the transaction, tells Redis after the commit."""

    def __init__(
        self,
        schedule: ReminderSchedule,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._schedule = schedule
        self._clock = clock
        self._on_scheduled = on_scheduled

    def for_new(self, *, booking_id: uuid.UUID, minutes: int | None, start: datetime) -> Plan | None:
        """The reminder of a booking about to be created (the create statement arms its row)."""
        due = due_for(status="scheduled", minutes=minutes, start=start, now=self._clock())
        return Plan(booking_id, due, fresh=True) if due is not None else None

    async def in_transaction(
        self, conn: Connection, booking: Booking | None, *, booking_id: uuid.UUID
    ) -> Plan | None:
        """Bring the reminder row in line with a changed (or, as None, deleted) booking."""
        if booking is None:  # deleted: ON DELETE CASCADE already removed the row
            return Plan(booking_id, None)
        now = self._clock()
        due = due_time(booking, now)
        if due is None:
            await store.cancel(conn, booking_id)
            return Plan(booking_id, None)
        current = await store.get_reminder(conn, booking_id)
        if current is not None and current.state == "sent" and current.start_time == booking.start_time:
            return None  # already reminded for this start; nothing to schedule
        if (
            current is not None
            and current.state == "pending"
            and current.start_time == booking.start_time
            and (current.due_at == due or (due == now and current.due_at <= now))
        ):
            return None  # unchanged (an edit of other fields): keep the schedule
        await store.arm(
            conn, booking_id=booking_id, user_id=booking.user_id, start_time=booking.start_time, due_at=due
        )
        return Plan(booking_id, due)

    async def after_commit(self, plan: Plan) -> None:
        if plan.due_at is not None:
            # Counted once committed: PostgreSQL holds the reminder now, whether Redis takes its copy
            # below or the reconciler does later.
            self._on_scheduled()
        try:  # the schedule bounds its own Redis calls (the web app's is behind the RedisGate)
            if plan.due_at is None:
                await self._schedule.unschedule(plan.booking_id)
            else:
                await self._schedule.schedule(plan.booking_id, plan.due_at, fresh=plan.fresh)
        except Exception as exc:  # any Redis failure or timeout: the booking change stands
            # PostgreSQL holds the intent; the reconciler schedules it once Redis answers again.
            log.warning(
                "reminder for %s not scheduled in Redis (%s); the reconciler will", plan.booking_id, exc
            )


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
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_page(
        self, user_id: uuid.UUID, *, unread: bool | None, page: int, limit: int
    ) -> tuple[list[Notification], int]:
        async with self._db.connect() as conn:
            return await store.list_notifications(
                conn, user_id=user_id, unread=unread, offset=(page - 1) * limit, limit=limit
            )

    async def mark_read(self, user_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
        async with self._db.begin() as conn:
            found = await store.mark_read(conn, user_id=user_id, notification_id=notification_id)
        if found is None:
            raise NotFound("notification not found")
        return found
