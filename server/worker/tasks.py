"""The reminder task, the worker's resources, and the scheduler that enqueues due reminders from PostgreSQL.

No `from __future__ import annotations` here: taskiq resolves the task's dependency annotations at
run time.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from taskiq import AsyncBroker, TaskiqDepends, TaskiqEvents, TaskiqState

from actors.domain.events import Event
from actors.domain.views import booking_view, iso
from actors.hub import make_event
from server.base.settings import Settings
from server.bus import redisconf
from server.bus.events import EventBus
from server.bus.jobstats import JobStats
from server.worker.broker import DELIVER_REMINDER, LEAD, enqueue_reminder
from storage import reminders as store
from storage import webhook_outbox as webhook_store
from storage.bookings import Booking, get_booking
from storage.db import Database
from storage.reminders import Notification
from storage.tables import ACTIVE_STATUSES

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # "sent" | "duplicate" | "inactive" | "early"
    lateness: float | None = None
    notification_id: uuid.UUID | None = None


async def deliver(
    db: Database, bus: EventBus, *, booking_id: uuid.UUID, due_at: datetime, clock: Clock = utcnow
) -> Outcome:
    """Claim, store and publish one reminder. Safe to run any number of times: one notification."""
    early = (due_at - clock()).total_seconds()
    if early > LEAD.total_seconds() + 1.0:  # not from the scheduler: the schedule will fire it
        log.warning("reminder %s arrived %.1fs early; left to its schedule", booking_id, early)
        return Outcome("early")
    if early > 0:  # the schedule fires up to LEAD early so the 1 s scheduler tick adds no lateness
        await asyncio.sleep(early)
    async with db.begin() as conn:
        booking = await store.lock_booking(conn, booking_id)
        if booking is None or booking.status not in ACTIVE_STATUSES:
            await store.cancel(conn, booking_id)
            return Outcome("inactive")
        if not await store.claim(conn, booking_id=booking_id, due_at=due_at):
            return Outcome("duplicate")
        minutes = booking.reminder_minutes_before
        note = await store.add_notification(
            conn,
            user_id=booking.user_id,
            kind="booking.reminder",
            title=f"Reminder: {booking.title}",
            data={
                "bookingId": str(booking.id),
                "startTime": iso(booking.start_time),
                "dueAt": iso(due_at),
                "minutesBefore": minutes,
            },
        )
        booking = await store.mark_booking_reminded(conn, booking_id) or booking
        # Its webhook messages, in the same transaction; the scheduler's dispatcher enqueues them.
        await webhook_store.enqueue(
            conn,
            event_type="booking.reminder",
            user_id=booking.user_id,
            booking_id=booking.id,
            payload={
                "booking": booking.snapshot(),
                "reminder": {**note.data, "notificationId": str(note.id)},
            },
            handed_off=False,  # the scheduler's dispatcher enqueues them
        )
    lateness = (clock() - due_at).total_seconds()
    await publish(db, bus, note, booking)
    log.info("reminder %s delivered %.3fs after due", booking_id, lateness)
    return Outcome("sent", lateness, note.id)


def reminder_event(note: Notification, booking: Booking) -> Event:
    """`booking.reminder`, built from the stored notification (so a republish sends the same frame)."""
    return make_event(
        "booking.reminder",
        {
            "notificationId": str(note.id),
            "bookingId": str(booking.id),
            "title": booking.title,
            "startTime": note.data.get("startTime", iso(booking.start_time)),
            "dueAt": note.data.get("dueAt"),
            "minutesBefore": note.data.get("minutesBefore"),
            "booking": booking_view(booking),
        },
    )


async def publish(db: Database, bus: EventBus, note: Notification, booking: Booking) -> None:
    """The outbox's happy path: publish right after the commit, then mark the row published. When the
    publish fails (Redis down) or the process dies first, the row stays unpublished and the scheduler's
    `Republisher` sends it later: the live event is at least once, the notification row exactly once."""
    if not await bus.emit(booking.user_id, reminder_event(note, booking)):
        return
    try:
        async with db.connect() as conn:
            await store.mark_published(conn, note.id)
    except Exception:  # the event is out; a republish may send it twice, which is the lesser harm
        log.warning("reminder %s published but not marked", note.id, exc_info=True)


@dataclass
class Republisher:
    """Sends the `booking.reminder` events whose notification committed but whose publish did not
    happen or reached no web process (the worker died between the two, Redis was down, or the web
    processes' listeners were not subscribed yet after a Redis restart). Runs in the scheduler process."""

    db: Database
    bus: EventBus
    after: timedelta = timedelta(seconds=5)  # the worker's own publish gets this long first
    # A reminder nobody could be shown for this long (no web process listening: a deployment of workers
    # only, or a long outage) is marked and dropped as a live event; the notification row stays.
    give_up: timedelta = timedelta(minutes=10)
    batch: int = 200
    clock: Clock = utcnow

    async def run(self, interval: float) -> None:
        await every(interval, self.once, "republisher")

    async def once(self) -> int:
        sent = 0
        now = self.clock()
        async with self.db.begin() as conn:
            for note in await store.lock_unpublished(conn, before=now - self.after, limit=self.batch):
                if note.created_at < now - self.give_up:
                    await store.mark_published(conn, note.id)
                    continue
                raw = note.data.get("bookingId")
                booking = await get_booking(conn, uuid.UUID(raw)) if isinstance(raw, str) else None
                # A booking deleted since has no live reminder to show; its notification row stays.
                if booking is not None and not await self.bus.emit(
                    booking.user_id, reminder_event(note, booking)
                ):
                    break  # Redis is down, or no web process listens yet: the rest wait for the next pass
                await store.mark_published(conn, note.id)
                sent += booking is not None
        if sent:
            log.info("republished %d reminder event(s) whose first publish did not happen", sent)
        return sent


async def every(interval: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `step` every `interval` seconds until cancelled; a failed pass is logged, never fatal."""
    while True:
        try:
            await step()
        except (RedisError, OSError) as exc:
            log.warning("%s: Redis unavailable (%s)", what, type(exc).__name__)
        except Exception:
            log.exception("%s pass failed", what)
        await asyncio.sleep(interval)


# --- the worker ----------------------------------------------------------------------------------------


async def deliver_reminder(booking_id: str, due_at: str, state: TaskiqState = TaskiqDepends()) -> str:  # noqa: B008
    """The task: one delivery, counted in Redis for the job service (server/bus/jobstats.py)."""
    stats: JobStats = state.stats
    key = uuid.UUID(booking_id)
    try:
        outcome = await deliver(state.db, state.bus, booking_id=key, due_at=datetime.fromisoformat(due_at))
    except Exception as exc:
        await stats.record(booking_id=key, due_at=due_at, status="failed", error=exc)
        raise
    await stats.record(booking_id=key, due_at=due_at, status=outcome.status, lateness=outcome.lateness)
    return outcome.status


def register(broker: AsyncBroker, settings: Settings) -> None:
    """The task and the worker's resources (created in WORKER_STARTUP, closed in WORKER_SHUTDOWN)."""
    broker.register_task(deliver_reminder, task_name=DELIVER_REMINDER)

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def startup(state: TaskiqState) -> None:
        state.db = await Database.open(
            settings.database_url, pool_size=settings.db_pool_size, timeout=settings.db_timeout
        )
        state.redis = redisconf.connect(settings)
        state.bus = EventBus(state.redis, prefix=settings.redis_prefix)
        state.stats = JobStats(state.redis, prefix=settings.redis_prefix)

    @broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
    async def shutdown(state: TaskiqState) -> None:
        # Logged, not raised: the Redis client and the broker's own pool (closed after this handler)
        # must close even when the database pool does not.
        try:
            await state.db.close()
        except Exception:
            log.exception("worker: the database pool did not close")
        await state.redis.aclose()


# --- the scheduler -------------------------------------------------------------------------------------


@dataclass
class ReminderScheduler:
    """PostgreSQL's pending `reminders` rows are the schedule; this puts each on the taskiq stream when
    it falls due.

    Every tick (`--update-interval`, 1 s) one statement takes the pending rows due before now +
    `lookahead` that nobody enqueued within `lease` (`storage.reminders.take_due`: the partial index on
    the pending rows' due time, FOR UPDATE SKIP LOCKED, `enqueued_at` set in the same statement), and
    each is enqueued at its due time minus `LEAD` (the task waits out the rest), sleeping until then as
    taskiq's own loop does. The tick reads only the rows due soon, so its cost does not grow with the
    pending reminders further out.

    - Two schedulers: SKIP LOCKED plus `enqueued_at` written by the taking statement make them take
      disjoint rows, so each reminder is enqueued once; if both ever did (a lease passed meanwhile), the
      worker's database claim drops the second.
    - A lost message (Redis flushed or restarted, a worker killed before its ack with nobody reclaiming):
      the row is still pending `lease` after its enqueue, so a tick takes it and enqueues it again.
    - A failed enqueue (Redis down) makes the row's lease expired: the next tick tries again.
    - A moved or deleted booking: its row was re-armed (`enqueued_at` reset) or removed; a message
      already made carries the old due time, and `deliver`'s claim refuses it.
    """

    db: Database
    broker: AsyncBroker
    interval: float = 1.0
    lease: timedelta = timedelta(seconds=5)
    batch: int = 1000
    clock: Clock = utcnow
    _waiting: dict[tuple[uuid.UUID, datetime], "asyncio.Task[None]"] = field(default_factory=dict)

    @property
    def lookahead(self) -> timedelta:
        """How far ahead a tick takes rows: past the next tick, plus the lead it enqueues with."""
        return LEAD + timedelta(seconds=2 * self.interval)

    async def run(self) -> None:
        try:
            await every(self.interval, self.once, "reminder scheduler")
        finally:
            await self.stop()

    async def once(self) -> list[tuple[uuid.UUID, datetime]]:
        """One tick: take what falls due soon and arm a timer for each. What it took (booking id, due
        time)."""
        now = self.clock()
        async with self.db.connect() as conn:
            rows = await store.take_due(
                conn, now=now, until=now + self.lookahead, lead=LEAD, lease=self.lease, limit=self.batch
            )
        for booking_id, due_at in rows:
            key = (booking_id, due_at)
            if key not in self._waiting:
                task = asyncio.create_task(self._enqueue_at(booking_id, due_at))
                self._waiting[key] = task
                task.add_done_callback(lambda _t, k=key: self._waiting.pop(k, None))  # type: ignore[misc]
        return rows

    async def _enqueue_at(self, booking_id: uuid.UUID, due_at: datetime) -> None:
        wait = (due_at - LEAD - self.clock()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await enqueue_reminder(self.broker, booking_id, due_at)
        except Exception as exc:
            log.warning(
                "reminder %s not enqueued (%s); the next tick retries", booking_id, type(exc).__name__
            )
            await self._release([(booking_id, due_at)])

    async def _release(self, rows: list[tuple[uuid.UUID, datetime]]) -> None:
        try:
            async with self.db.connect() as conn:
                for booking_id, due_at in rows:
                    await store.release(conn, booking_id=booking_id, due_at=due_at)
        except Exception as exc:  # its lease runs out instead
            log.warning("reminder lease not released (%s)", type(exc).__name__)

    async def stop(self) -> None:
        """Cancel the timers not fired yet and give their rows back, so another scheduler (or this one's
        restart) takes them at once rather than after the lease."""
        waiting = [k for k, t in self._waiting.items() if not t.done()]
        for task in self._waiting.values():
            task.cancel()
        self._waiting.clear()
        if waiting:
            await self._release(waiting)
