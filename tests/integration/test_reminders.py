"""Reminders against real PostgreSQL and Redis: the hook (the row, written in the booking's transaction, is
the schedule; nothing goes to Redis but an already-due reminder), the task's exactly-once claim, the
scheduler's tick (lookahead, lease, two schedulers), and /api/notifications."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from actors.reminders import Plan, Reminders
from server.base.settings import Settings
from server.bus.events import EventBus
from server.bus.redisgate import GatedKick, RedisGate
from server.web.keys import DB
from server.worker.broker import LEAD, DirectEnqueue, drop_old_schedule, make_broker, stream_name
from server.worker.tasks import Outcome, ReminderScheduler, Republisher, deliver
from storage import reminders as store
from storage.db import Database
from tests.conftest import Client, Registrar, auth


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def create(
    client: Client, session: dict[str, Any], *, start_in: timedelta, **extra: Any
) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) + start_in
    body = {"title": "Dentist", "startTime": iso(start), "endTime": iso(start + timedelta(hours=1)), **extra}
    resp = await client.post("/api/booking", json=body, headers=auth(session))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


class RedisView:
    """What this run's prefix holds in Redis: the old schedule's keys (there must be none) and the
    deliveries waiting on the stream."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.prefix = settings.redis_prefix
        self.stream = stream_name(settings)
        self.redis = redis

    async def schedule_keys(self) -> list[bytes]:
        return [k async for k in self.redis.scan_iter(match=f"{self.prefix}schedule:*")]

    async def queued_due(self, booking_id: str) -> list[str]:
        """The due times of the deliveries of `booking_id` waiting on the taskiq stream."""
        entries = await self.redis.xrange(self.stream)
        messages = [json.loads(fields[b"data"]) for _, fields in entries]
        return [m["kwargs"]["due_at"] for m in messages if m["kwargs"]["booking_id"] == booking_id]

    async def untouched(self, booking_id: str) -> bool:
        """No Redis schedule at all, and no delivery of this booking on the stream."""
        return not await self.schedule_keys() and not await self.queued_due(booking_id)


@pytest.fixture
async def source(settings: Settings, redis: Redis) -> RedisView:
    return RedisView(settings, redis)


@pytest.fixture
def db(client: Client) -> Database:
    found: Database = client.app[DB]
    return found


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


async def reminder(db: Database, booking_id: str) -> store.Reminder | None:
    async with db.connect() as conn:
        return await store.get_reminder(conn, uuid.UUID(booking_id))


# --- the hook -------------------------------------------------------------------------------------------


async def test_reminder_is_due_minutes_before_start_in_postgres_and_nothing_goes_to_redis(
    client: Client, register: Registrar, db: Database, source: RedisView
) -> None:
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=2), reminderMinutesBefore=30)
    row = await reminder(db, booking["id"])
    start = datetime.fromisoformat(booking["startTime"])
    assert row is not None and row.state == "pending"
    assert row.due_at == start - timedelta(minutes=30) and row.enqueued_at is None
    assert await source.untouched(booking["id"])  # the row is the schedule


async def test_default_is_ten_minutes_and_past_due_but_not_started_is_due_now(
    client: Client, register: Registrar, db: Database, source: RedisView
) -> None:
    user = await register()
    default = await create(client, user, start_in=timedelta(hours=3))
    row = await reminder(db, default["id"])
    assert row is not None
    assert row.due_at == datetime.fromisoformat(default["startTime"]) - timedelta(minutes=10)

    before = datetime.now(UTC)
    soon = await create(client, user, start_in=timedelta(minutes=5), reminderMinutesBefore=60)
    row = await reminder(db, soon["id"])
    assert row is not None and row.state == "pending"
    assert before <= row.due_at <= datetime.now(UTC)
    # Due now: not left for the scheduler's next tick, but a message on the stream at once.
    assert not await source.schedule_keys()
    assert await source.queued_due(soon["id"]) == [row.due_at.isoformat()]


async def test_null_minutes_means_no_reminder(
    client: Client, register: Registrar, db: Database, source: RedisView
) -> None:
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=2), reminderMinutesBefore=None)
    assert await reminder(db, booking["id"]) is None
    assert await source.untouched(booking["id"])


async def test_moving_the_booking_moves_the_reminder(
    client: Client, register: Registrar, db: Database, source: RedisView
) -> None:
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=2), reminderMinutesBefore=15)
    new_start = datetime.fromisoformat(booking["startTime"]) + timedelta(hours=5)
    resp = await client.patch(
        f"/api/booking/{booking['id']}",
        json={"startTime": iso(new_start), "endTime": iso(new_start + timedelta(hours=1))},
        headers=auth(user),
    )
    assert resp.status == 200, await resp.text()
    row = await reminder(db, booking["id"])
    assert row is not None and row.state == "pending"
    assert row.due_at == new_start - timedelta(minutes=15)
    assert await source.untouched(booking["id"])

    # Other edits leave the row alone; switching the reminder off cancels it.
    resp = await client.patch(f"/api/booking/{booking['id']}", json={"title": "Moved"}, headers=auth(user))
    assert resp.status == 200
    assert (await reminder(db, booking["id"])) == row
    resp = await client.patch(
        f"/api/booking/{booking['id']}", json={"reminderMinutesBefore": None}, headers=auth(user)
    )
    assert resp.status == 200
    cancelled = await reminder(db, booking["id"])
    assert cancelled is not None and cancelled.state == "cancelled"
    assert await source.untouched(booking["id"])


async def test_cancelling_or_deleting_cancels_the_reminder(
    client: Client, register: Registrar, db: Database, source: RedisView
) -> None:
    user = await register()
    cancelled = await create(client, user, start_in=timedelta(hours=2))
    deleted = await create(client, user, start_in=timedelta(hours=5))
    resp = await client.patch(
        f"/api/booking/{cancelled['id']}/status", json={"status": "cancelled"}, headers=auth(user)
    )
    assert resp.status == 200, await resp.text()
    row = await reminder(db, cancelled["id"])
    assert row is not None and row.state == "cancelled"
    assert await source.untouched(cancelled["id"])

    assert await reminder(db, deleted["id"]) is not None
    resp = await client.delete(f"/api/booking/{deleted['id']}", headers=auth(user))
    assert resp.status == 204
    assert await reminder(db, deleted["id"]) is None
    assert await source.untouched(deleted["id"])


class Recording:
    """A kick that records what it was asked to enqueue (the hook's only Redis call)."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[uuid.UUID, datetime]] = []

    def is_due(self, due_at: datetime, now: datetime | None = None) -> bool:
        return DirectEnqueue.is_due(due_at, now)

    async def enqueue(self, booking_id: uuid.UUID, due_at: datetime) -> None:
        self.enqueued.append((booking_id, due_at))


async def test_the_hook_makes_no_redis_call_for_a_reminder_due_later_and_one_for_one_due_now() -> None:
    kick, counted = Recording(), []
    hook = Reminders(kick, on_scheduled=lambda: counted.append(1))
    later, now = uuid.uuid4(), uuid.uuid4()
    await hook.after_commit(Plan(later, datetime.now(UTC) + timedelta(minutes=5), fresh=True))
    await hook.after_commit(Plan(uuid.uuid4(), datetime.now(UTC) + LEAD * 3))  # moved, still ahead
    await hook.after_commit(Plan(uuid.uuid4(), None))  # cancelled or deleted
    assert kick.enqueued == []
    due = datetime.now(UTC)
    await hook.after_commit(Plan(now, due, fresh=True))
    assert kick.enqueued == [(now, due)]
    assert len(counted) == 3  # every armed or moved reminder, not the cancelled one


async def test_redis_down_at_commit_keeps_the_change_and_the_scheduler_enqueues_it(
    client: Client, register: Registrar, db: Database, settings: Settings, source: RedisView
) -> None:
    """An already-due reminder's direct enqueue against an unreachable Redis returns quickly without
    raising; the scheduler enqueues it from PostgreSQL once the web process's turn (the lease) passed."""
    _, row = await _due_now(client, register, db)
    await source.redis.delete(source.stream)  # the web's own enqueue "lost"
    dead_broker = make_broker(replace(settings, redis_url="redis://127.0.0.1:1/0", db_timeout=0.5))
    try:
        hook = Reminders(GatedKick(DirectEnqueue(dead_broker), RedisGate(timeout=1.0, pause=1.0)))
        started = asyncio.get_running_loop().time()
        await hook.after_commit(Plan(row.booking_id, row.due_at))
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        await dead_broker.connection_pool.disconnect()
    assert await source.queued_due(str(row.booking_id)) == []

    broker = make_broker(settings)
    try:
        lease = timedelta(seconds=5)
        soon = ReminderScheduler(db=db, broker=broker, lease=lease, clock=lambda: row.due_at)
        # Armed already due: the web process's enqueue counts for one lease.
        assert (row.booking_id, row.due_at) not in await soon.once()
        await soon.stop()
        assert await source.queued_due(str(row.booking_id)) == []
        late = ReminderScheduler(
            db=db, broker=broker, lease=lease, clock=lambda: row.due_at + lease + timedelta(seconds=1)
        )
        assert (row.booking_id, row.due_at) in await late.once()
        await wait_for_queued(source, str(row.booking_id), [row.due_at.isoformat()])
        await late.stop()
    finally:
        await broker.shutdown()


async def wait_for_queued(
    source: RedisView, booking_id: str, expected: list[str], within: float = 3.0
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (got := await source.queued_due(booking_id)) != expected:
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.02)


# --- delivery -------------------------------------------------------------------------------------------


async def _due_now(client: Client, register: Registrar, db: Database) -> tuple[dict[str, Any], Any]:
    user = await register()
    booking = await create(client, user, start_in=timedelta(minutes=30), reminderMinutesBefore=60)
    row = await reminder(db, booking["id"])
    assert row is not None
    return user, row


async def _count_notifications(db: Database, user_id: uuid.UUID) -> int:
    async with db.connect() as conn:
        _, total = await store.list_notifications(conn, user_id=user_id, unread=None, offset=0, limit=1)
    return total


async def test_deliver_claims_once_sequentially_and_concurrently(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    user, row = await _due_now(client, register, db)
    bus = EventBus(redis, prefix=settings.redis_prefix)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(bus.channel)
    try:
        outcomes = await asyncio.gather(
            *(deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at) for _ in range(6))
        )
        again = await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)
        assert sorted(o.status for o in outcomes) == ["duplicate"] * 5 + ["sent"]
        assert again.status == "duplicate"
        assert await _count_notifications(db, row.user_id) == 1

        events = []
        for _ in range(20):
            message = await pubsub.get_message(timeout=0.1)
            if message:
                events.append(json.loads(message["data"]))
        assert [e["event"]["event"] for e in events] == ["booking.reminder"]
        assert events[0]["user"] == user["user"]["id"]
        assert events[0]["event"]["data"]["bookingId"] == str(row.booking_id)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    sent = await reminder(db, str(row.booking_id))
    assert sent is not None and sent.state == "sent" and sent.sent_at is not None
    resp = await client.get(f"/api/booking/{row.booking_id}", headers=auth(user))
    assert (await resp.json())["reminderSentAt"] is not None

    # An edit that does not move the start does not re-arm a sent reminder.
    resp = await client.patch(f"/api/booking/{row.booking_id}", json={"notes": "x"}, headers=auth(user))
    assert resp.status == 200
    assert (await reminder(db, str(row.booking_id))) == sent


async def test_a_stale_due_time_or_cancelled_booking_sends_nothing(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    user, row = await _due_now(client, register, db)
    bus = EventBus(redis, prefix=settings.redis_prefix)
    stale = await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at - timedelta(minutes=1))
    assert stale.status == "duplicate"
    resp = await client.patch(
        f"/api/booking/{row.booking_id}/status", json={"status": "cancelled"}, headers=auth(user)
    )
    assert resp.status == 200
    assert (await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)).status == "inactive"
    assert await _count_notifications(db, row.user_id) == 0


async def _arm(db: Database, row: store.Reminder, due_at: datetime) -> None:
    async with db.begin() as conn:
        await store.arm(
            conn, booking_id=row.booking_id, user_id=row.user_id, start_time=row.start_time, due_at=due_at
        )


async def _future(client: Client, register: Registrar, db: Database, *, due_in: timedelta) -> store.Reminder:
    """A pending reminder armed (as by a later edit) to fall due in `due_in`; one already due was armed a
    minute ago and never taken (no scheduler ran, or the web process's enqueue was lost)."""
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=3))
    row = await reminder(db, booking["id"])
    assert row is not None
    await _arm(db, row, datetime.now(UTC) + due_in)
    if due_in <= LEAD:  # armed a minute ago (else it counts as enqueued by the web process at its arm)
        async with db.connect() as conn:
            await conn.execute(
                "UPDATE reminders SET updated_at = updated_at - interval '1 minute' WHERE booking_id = $1",
                row.booking_id,
            )
    armed = await reminder(db, booking["id"])
    assert armed is not None and armed.enqueued_at is None
    return armed


async def test_a_tick_takes_only_what_falls_due_within_its_lookahead_and_enqueues_it_at_its_time(
    client: Client, register: Registrar, db: Database, settings: Settings, source: RedisView
) -> None:
    near = await _future(client, register, db, due_in=LEAD + timedelta(seconds=1.5))
    far = await _future(client, register, db, due_in=timedelta(minutes=5))
    broker = make_broker(settings)
    scheduler = ReminderScheduler(db=db, broker=broker, interval=1.0)
    try:
        await scheduler.once()
        taken = await reminder(db, str(near.booking_id))
        assert taken is not None and taken.enqueued_at == near.due_at - LEAD
        assert (await reminder(db, str(far.booking_id))) == far  # beyond the lookahead: untouched
        # Not on the stream before its time (due - LEAD), then there once.
        assert await source.queued_due(str(near.booking_id)) == []
        await wait_for_queued(source, str(near.booking_id), [near.due_at.isoformat()], within=4.0)
        enqueued_late = (datetime.now(UTC) - (near.due_at - LEAD)).total_seconds()
        assert 0 <= enqueued_late < 0.5, enqueued_late
        # Taken already, within its lease: not taken (no timer armed) again.
        assert (near.booking_id, near.due_at) not in await scheduler.once()
        assert await source.queued_due(str(near.booking_id)) == [near.due_at.isoformat()]
    finally:
        await scheduler.stop()
        await broker.shutdown()


async def test_a_row_still_pending_after_its_lease_is_enqueued_again_and_two_schedulers_take_it_once(
    client: Client, register: Registrar, db: Database, settings: Settings, source: RedisView
) -> None:
    row = await _future(client, register, db, due_in=timedelta(seconds=-10))  # overdue, never taken
    broker = make_broker(settings)
    lease = timedelta(seconds=5)
    now = datetime.now(UTC)
    first = ReminderScheduler(db=db, broker=broker, lease=lease, clock=lambda: now)
    second = ReminderScheduler(db=db, broker=broker, lease=lease, clock=lambda: now)
    after = ReminderScheduler(
        db=db, broker=broker, lease=lease, clock=lambda: now + lease + timedelta(seconds=1)
    )
    much_later = ReminderScheduler(db=db, broker=broker, lease=lease, clock=lambda: now + lease * 10)
    key = (row.booking_id, row.due_at)
    try:
        taken = await asyncio.gather(first.once(), second.once())
        assert [key in rows for rows in taken].count(True) == 1  # one of the two takes it
        await wait_for_queued(source, str(row.booking_id), [row.due_at.isoformat()])
        await source.redis.delete(source.stream)  # the message lost (a flush, a restart)
        assert key not in await second.once()  # within the lease: not taken, no timer armed
        assert await source.queued_due(str(row.booking_id)) == []
        assert key in await after.once()
        await wait_for_queued(source, str(row.booking_id), [row.due_at.isoformat()])
        await after.stop()
        # Delivered: no longer pending, never taken again.
        bus = EventBus(source.redis, prefix=settings.redis_prefix)
        assert (await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)).status == "sent"
        await source.redis.delete(source.stream)
        assert key not in await much_later.once()
        assert await source.queued_due(str(row.booking_id)) == []
    finally:
        for scheduler in (first, second, after, much_later):
            await scheduler.stop()
        await broker.shutdown()


async def test_a_moved_reminder_is_taken_afresh_and_its_old_message_delivers_nothing(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    row = await _future(client, register, db, due_in=timedelta(seconds=-1))
    broker = make_broker(settings)
    scheduler = ReminderScheduler(db=db, broker=broker)
    try:
        await scheduler.once()
        taken = await reminder(db, str(row.booking_id))
        assert taken is not None and taken.enqueued_at is not None
        moved_to = datetime.now(UTC) + timedelta(minutes=30)
        await _arm(db, row, moved_to)
        moved = await reminder(db, str(row.booking_id))
        assert moved is not None and moved.enqueued_at is None  # re-armed: the scheduler takes it anew
        bus = EventBus(redis, prefix=settings.redis_prefix)
        old = await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)
        assert old.status == "duplicate"  # the old time's message claims nothing
        assert await _count_notifications(db, row.user_id) == 0
    finally:
        await scheduler.stop()
        await broker.shutdown()


async def test_the_scheduler_start_drops_an_old_versions_redis_schedule(
    settings: Settings, source: RedisView
) -> None:
    prefix = settings.redis_prefix
    old = [f"{prefix}schedule:data:reminder:{uuid.uuid4()}", f"{prefix}schedule:reminders"]
    for key in old:
        await source.redis.set(key, "x")
    await source.redis.rpush(f"{prefix}schedule:time:2026-01-01T00:00", "reminder:x")
    keep = f"{prefix}events-keep-{uuid.uuid4().hex}"
    await source.redis.set(keep, "1")
    try:
        assert await drop_old_schedule(source.redis, prefix, batch=2) == 3
        assert not await source.schedule_keys()
        assert await source.redis.get(keep) == b"1"
    finally:
        await source.redis.delete(keep)


# --- /api/notifications ---------------------------------------------------------------------------------


async def test_notifications_list_newest_first_and_mark_read(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    bus = EventBus(redis, prefix=settings.redis_prefix)
    user = await register()
    ids = []
    for minutes in (20, 100):
        booking = await create(client, user, start_in=timedelta(minutes=minutes), reminderMinutesBefore=120)
        row = await reminder(db, booking["id"])
        assert row is not None
        outcome = await deliver(db, bus, booking_id=row.booking_id, due_at=datetime.now(UTC))
        assert outcome.status == "duplicate"  # not this due time
        outcome = await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)
        ids.append(str(outcome.notification_id))

    resp = await client.get("/api/notifications?limit=1", headers=auth(user))
    assert resp.status == 200
    page = await resp.json()
    assert [n["id"] for n in page["data"]] == [ids[1]]
    assert page["meta"] == {"total": 2, "page": 1, "limit": 1, "totalPages": 2}
    assert page["unread"] == 2
    assert page["data"][0]["kind"] == "booking.reminder" and page["data"][0]["read"] is False

    resp = await client.post(f"/api/notifications/{ids[0]}/read", headers=auth(user))
    assert resp.status == 200
    assert (await resp.json())["read"] is True
    resp = await client.get("/api/notifications?unread=true", headers=auth(user))
    assert [n["id"] for n in (await resp.json())["data"]] == [ids[1]]

    other = await register()
    assert (await client.post(f"/api/notifications/{ids[1]}/read", headers=auth(other))).status == 404
    assert (await client.post("/api/notifications/nope/read", headers=auth(other))).status == 404
    assert (await client.get("/api/notifications")).status == 401


async def _unpublished(db: Database, notification_id: uuid.UUID) -> bool:
    async with db.connect() as conn:
        value = await conn.fetchval(
            "SELECT published_at IS NULL FROM notifications WHERE id = $1", notification_id
        )
    return bool(value)


async def deliver_unpublished(db: Database, settings: Settings, row: store.Reminder) -> Outcome:
    """Deliver with a bus whose Redis is unreachable: the notification commits, its event does not go
    out (the state a worker leaves when it dies between the two)."""
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        bus = EventBus(dead, prefix=settings.redis_prefix)
        return await deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at)
    finally:
        await dead.aclose()


async def published_during(
    redis: Redis, settings: Settings, passes: Callable[[], Awaitable[object]], notification_id: uuid.UUID
) -> list[dict[str, Any]]:
    """The envelopes about `notification_id` published on the events channel while `passes` runs."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{settings.redis_prefix}events")
    try:
        await passes()
        mine = []
        for _ in range(10):
            message = await pubsub.get_message(timeout=0.1)
            if message:
                published = json.loads(message["data"])
                for envelope in published.get("batch", [published]):  # one event, or several together
                    if envelope["event"]["data"].get("notificationId") == str(notification_id):
                        mine.append(envelope)
        return mine
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_an_event_that_missed_redis_is_republished_once_by_the_outbox(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    """The worker commits the notification, then its publish fails (Redis down, or the process dies):
    the row stays unpublished, and republishers, even two at once, send the event exactly once."""
    user, row = await _due_now(client, register, db)
    outcome = await deliver_unpublished(db, settings, row)
    assert outcome.status == "sent" and outcome.notification_id is not None
    assert await _unpublished(db, outcome.notification_id)

    bus = EventBus(redis, prefix=settings.redis_prefix)
    too_soon = Republisher(db=db, bus=bus)  # gives the worker's own publish 5 s first
    await too_soon.once()
    assert await _unpublished(db, outcome.notification_id)

    now = Republisher(db=db, bus=bus, after=timedelta(0))

    async def passes() -> None:
        await asyncio.gather(now.once(), now.once())
        await now.once()

    mine = await published_during(redis, settings, passes, outcome.notification_id)
    assert len(mine) == 1, mine
    assert mine[0]["user"] == user["user"]["id"]
    data = mine[0]["event"]["data"]
    assert (mine[0]["event"]["event"], data["bookingId"]) == ("booking.reminder", str(row.booking_id))
    assert data["dueAt"] is not None and data["booking"]["id"] == str(row.booking_id)
    assert not await _unpublished(db, outcome.notification_id)
    assert await _count_notifications(db, row.user_id) == 1


async def test_the_outbox_marks_a_deleted_bookings_reminder_without_sending_it(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    user, row = await _due_now(client, register, db)
    outcome = await deliver_unpublished(db, settings, row)
    assert outcome.notification_id is not None
    assert (await client.delete(f"/api/booking/{row.booking_id}", headers=auth(user))).status == 204
    bus = EventBus(redis, prefix=settings.redis_prefix)
    republisher = Republisher(db=db, bus=bus, after=timedelta(0))
    assert await published_during(redis, settings, republisher.once, outcome.notification_id) == []
    assert not await _unpublished(db, outcome.notification_id)


async def test_the_outbox_keeps_an_event_nobody_heard_and_gives_up_on_an_old_one(
    client: Client, register: Registrar, db: Database, settings: Settings, redis: Redis
) -> None:
    """A publish that reaches no listener (the web processes not subscribed yet after a Redis restart)
    is not a delivery: the row stays unpublished for the next pass. One older than `give_up` is marked
    without an event (nobody was there to show it to; the notification row stays)."""
    _, row = await _due_now(client, register, db)
    outcome = await deliver_unpublished(db, settings, row)
    assert outcome.notification_id is not None
    unheard = EventBus(redis, prefix=f"nobody{uuid.uuid4().hex[:8]}:")
    await Republisher(db=db, bus=unheard, after=timedelta(0)).once()
    assert await _unpublished(db, outcome.notification_id)

    bus = EventBus(redis, prefix=settings.redis_prefix)
    gives_up = Republisher(db=db, bus=bus, after=timedelta(0), give_up=timedelta(0))
    assert await published_during(redis, settings, gives_up.once, outcome.notification_id) == []
    assert not await _unpublished(db, outcome.notification_id)
    assert await _count_notifications(db, row.user_id) == 1


async def test_a_tick_reads_only_the_rows_due_soon_from_the_index(
    client: Client, register: Registrar, db: Database
) -> None:
    """The tick's statement reads the partial index from its low end to now + lookahead: its plan is an
    index scan on `ix_reminders_schedule` bounded by `due_at`, however many rows are pending further
    out (bench `scheduler` measures the cost flat from 1,000 to 1,000,000)."""
    await _future(client, register, db, due_in=timedelta(hours=1))
    async with db.connect() as conn:
        await conn.execute("ANALYZE reminders")
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT booking_id FROM reminders WHERE state = 'pending' AND due_at < now() "
                    "ORDER BY due_at LIMIT 1000"
                )
            )
    assert "ix_reminders_schedule" in plan, plan
