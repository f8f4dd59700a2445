"""The reminder lifecycle: PostgreSQL's `reminders` row (written in the booking's transaction) is the
schedule; the scheduler (server/worker/tasks.py `ReminderScheduler`) enqueues each row when it falls due.

Due at `start - reminderMinutesBefore`; already past but the booking not started → due now. Moving the
start re-arms it (even after it was sent); `null` minutes, a final status, or a delete cancel it. Nothing
goes to Redis after the commit, except a reminder already due: the web process puts that one on the
stream itself (one XADD) so it does not wait for the scheduler's next tick; if Redis is down the change
still stands and the scheduler enqueues it once the row's lease has passed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from actors.domain.errors import NotFound
from actors.domain.views import iso
from storage import reminders as store
from storage.bookings import Booking
from storage.db import Connection, Database
from storage.reminders import Notification
from storage.tables import ACTIVE_STATUSES

log = logging.getLogger(__name__)


class ReminderKick(Protocol):
    """The fast path for a reminder already due: the taskiq stream, behind the web process's RedisGate
    in production (server/bus/redisgate.py), which bounds each call in time."""

    def is_due(self, due_at: datetime, now: datetime | None = None) -> bool: ...

    async def enqueue(self, booking_id: uuid.UUID, due_at: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What happens once the booking's transaction commits."""

    booking_id: uuid.UUID
    due_at: datetime | None  # None: no reminder (cancelled or deleted; the row says so already)
    fresh: bool = False  # a new booking


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
    """The booking actor's `ReminderHook`: decides in the transaction; after the commit, enqueues only a
    reminder that is already due."""

    def __init__(
        self,
        kick: ReminderKick,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self._kick = kick
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
            return None  # unchanged (an edit of other fields): the row stays as it is
        await store.arm(
            conn, booking_id=booking_id, user_id=booking.user_id, start_time=booking.start_time, due_at=due
        )
        return Plan(booking_id, due)

    async def after_commit(self, plan: Plan) -> None:
        if plan.due_at is None:
            return  # cancelled or deleted in the transaction: the scheduler never takes it
        # Counted once committed: the row is the schedule.
        self._on_scheduled()
        if not self._kick.is_due(plan.due_at):
            return  # the scheduler enqueues it when it falls due: no Redis round trip here
        try:  # the kick bounds its own Redis calls (the web app's is behind the RedisGate)
            await self._kick.enqueue(plan.booking_id, plan.due_at)
        except Exception as exc:  # any Redis failure or timeout: the booking change stands
            log.warning("due reminder for %s not enqueued (%s); the scheduler will", plan.booking_id, exc)


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
