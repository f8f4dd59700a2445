"""Reminders against real PostgreSQL and Redis: the hook (intent in the booking's transaction, copy in
Redis), the task's exactly-once claim, the reconciler, and /api/notifications."""

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
from server.bus.redisgate import GatedSchedule, RedisGate
from server.web.keys import DB
from server.worker.broker import LEAD, ReminderSource, make_broker
from server.worker.tasks import Outcome, Reconciler, Republisher, deliver
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


@pytest.fixture
async def source(settings: Settings) -> AsyncIterator[ReminderSource]:
    src = ReminderSource(settings)
    yield src
    await src.close()


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


async def scheduled_due(source: ReminderSource, booking_id: str) -> str | None:
    async with source.redis() as r:
        raw = await r.get(source.data_key(booking_id))
    return None if raw is None else str(json.loads(raw)["kwargs"]["due_at"])


async def queued_due(source: ReminderSource, booking_id: str) -> list[str]:
    """The due times of the deliveries of `booking_id` waiting on the taskiq stream."""
    async with source.redis() as r:
        entries = await r.xrange(source.key_prefix.removesuffix("schedule") + "taskiq:stream")
    messages = [json.loads(fields[b"data"]) for _, fields in entries]
    return [m["kwargs"]["due_at"] for m in messages if m["kwargs"]["booking_id"] == booking_id]


# --- the hook -------------------------------------------------------------------------------------------


async def test_reminder_is_due_minutes_before_start_in_postgres_and_redis(
    client: Client, register: Registrar, db: Database, source: ReminderSource
) -> None:
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=2), reminderMinutesBefore=30)
    row = await reminder(db, booking["id"])
    start = datetime.fromisoformat(booking["startTime"])
    assert row is not None and row.state == "pending"
    assert row.due_at == start - timedelta(minutes=30)
    assert await scheduled_due(source, booking["id"]) == row.due_at.isoformat()


async def test_default_is_ten_minutes_and_past_due_but_not_started_is_due_now(
    client: Client, register: Registrar, db: Database, source: ReminderSource
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
    # Due now: not a schedule entry for the scheduler's next read, but a message on the stream at once.
    assert await scheduled_due(source, soon["id"]) is None
    assert await queued_due(source, soon["id"]) == [row.due_at.isoformat()]


async def test_null_minutes_means_no_reminder(
    client: Client, register: Registrar, db: Database, source: ReminderSource
) -> None:
    user = await register()
    booking = await create(client, user, start_in=timedelta(hours=2), reminderMinutesBefore=None)
    assert await reminder(db, booking["id"]) is None
    assert await scheduled_due(source, booking["id"]) is None


async def test_moving_the_booking_moves_the_reminder(
    client: Client, register: Registrar, db: Database, source: ReminderSource
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
    assert await scheduled_due(source, booking["id"]) == row.due_at.isoformat()

    # Other edits leave the schedule alone; switching the reminder off cancels it.
    resp = await client.patch(f"/api/booking/{booking['id']}", json={"title": "Moved"}, headers=auth(user))
    assert resp.status == 200
    assert (await reminder(db, booking["id"])) == row
    resp = await client.patch(
        f"/api/booking/{booking['id']}", json={"reminderMinutesBefore": None}, headers=auth(user)
    )
    assert resp.status == 200
    cancelled = await reminder(db, booking["id"])
    assert cancelled is not None and cancelled.state == "cancelled"
    assert await scheduled_due(source, booking["id"]) is None


async def test_cancelling_or_deleting_cancels_the_reminder(
    client: Client, register: Registrar, db: Database, source: ReminderSource
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
    assert await scheduled_due(source, cancelled["id"]) is None

    assert await scheduled_due(source, deleted["id"]) is not None
    resp = await client.delete(f"/api/booking/{deleted['id']}", headers=auth(user))
    assert resp.status == 204
    assert await reminder(db, deleted["id"]) is None
    assert await scheduled_due(source, deleted["id"]) is None


async def test_redis_down_at_commit_keeps_the_change_and_the_intent(
    client: Client, register: Registrar, db: Database, settings: Settings, source: ReminderSource
) -> None:
    """after_commit against an unreachable Redis returns quickly without raising; the reconciler then
    schedules the reminder from PostgreSQL."""
    user = await register()
    booking = await create(client, user, start_in=timedelta(minutes=15))  # due in 5 min: in the horizon
    async with source.redis() as r:
        await r.delete(source.data_key(booking["id"]))
    dead = ReminderSource(replace(settings, redis_url="redis://127.0.0.1:1/0", db_timeout=0.5))
    try:
        hook = Reminders(GatedSchedule(dead, RedisGate(timeout=1.0, pause=1.0)))
        row = await reminder(db, booking["id"])
        assert row is not None
        started = asyncio.get_running_loop().time()
        await hook.after_commit(Plan(row.booking_id, row.due_at))
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        await dead.close()
    assert await scheduled_due(source, booking["id"]) is None

    broker = make_broker(settings)
    counts = await Reconciler(db=db, source=source, broker=broker).once()
    assert counts["added"] >= 1
    assert await scheduled_due(source, booking["id"]) == row.due_at.isoformat()
    await broker.shutdown()


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


async def test_reconciler_enqueues_overdue_reminders_missing_from_redis(
    client: Client, register: Registrar, db: Database, settings: Settings, source: ReminderSource
) -> None:
    _, row = await _due_now(client, register, db)
    async with source.redis() as r:
        await r.delete(source.data_key(row.booking_id))
    broker = make_broker(settings)
    try:
        later = Reconciler(
            db=db, source=source, broker=broker, clock=lambda: row.due_at + timedelta(seconds=30)
        )
        counts = await later.once()
        assert counts["enqueued"] >= 1
        async with source.redis() as r:
            assert await r.xlen(broker.queue_name) >= 1
        assert (await later.once())["enqueued"] == 0  # not re-enqueued on every pass
    finally:
        await broker.shutdown()


async def test_schedule_fires_one_lead_early_and_pre_send_guards(
    settings: Settings, source: ReminderSource
) -> None:
    from taskiq.exceptions import ScheduledTaskCancelledError

    booking_id, due = uuid.uuid4(), datetime.now(UTC) + timedelta(minutes=5)
    task = source.task_for(booking_id, due)
    assert task.time == due - LEAD
    with pytest.raises(ScheduledTaskCancelledError):  # not scheduled (deleted after the fetch)
        await source.pre_send(task)
    await source.schedule(booking_id, due + timedelta(minutes=1))
    with pytest.raises(ScheduledTaskCancelledError):  # moved after the fetch
        await source.pre_send(task)
    await source.schedule(booking_id, due)
    await source.pre_send(task)  # the first scheduler claims it
    with pytest.raises(ScheduledTaskCancelledError):  # a second scheduler does not
        await source.pre_send(task)
    await source.unschedule(booking_id)


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
                envelope = json.loads(message["data"])
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


async def test_the_schedule_source_scans_for_past_schedules_once_not_on_every_tick(
    settings: Settings, tmp_path: Any
) -> None:
    """The scheduler asks for schedules every second. taskiq-redis's list source SCANs every
    `schedule:time:*` key on each call, so a tick cost grew with the pending reminders; ours SCANs once
    (what fell due while no scheduler ran) and then reads two minute lists. On a Redis of its own, so
    the SCAN count is this source's alone."""
    from server.local.embedded import EmbeddedRedis

    server = await asyncio.to_thread(EmbeddedRedis.start, tmp_path / "redis")
    source = ReminderSource(replace(settings, redis_url=server.url))
    redis = Redis.from_url(server.url)
    try:
        now = datetime.now(UTC)
        overdue = [uuid.uuid4() for _ in range(3)]  # due while no scheduler ran
        later = [uuid.uuid4() for _ in range(200)]  # pending, hours ahead: never to be read by a tick
        for i, booking_id in enumerate(overdue):
            await source.schedule(booking_id, now - timedelta(minutes=20 + i), fresh=True)
        for i, booking_id in enumerate(later):
            await source.schedule(booking_id, now + timedelta(hours=1, minutes=i), fresh=True)
        current = uuid.uuid4()
        await source.schedule(current, now + LEAD + timedelta(seconds=1), fresh=True)

        async def scans() -> int:
            return int((await redis.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0))

        first = {uuid.UUID(t.kwargs["booking_id"]) for t in await source.get_schedules()}
        assert set(overdue) <= first and current in first and not first & set(later)
        after_first = await scans()
        assert after_first >= 1
        for _ in range(5):
            ticked = {uuid.UUID(t.kwargs["booking_id"]) for t in await source.get_schedules()}
            assert current in ticked and not ticked & set(later)
        assert await scans() == after_first
    finally:
        await redis.aclose()
        await source.close()
        await asyncio.to_thread(server.stop)
