"""Taskiq through Redis: the broker, the reminder schedule source and the scheduler, in one place.

Designed around the library facts in docs/REMINDERS.md (SPEC §9):
- `RedisStreamBroker` (consumer group + XACK), so a killed worker's message is not lost; its reclaim
  is slow (idle time + new traffic), so the reconciler also re-enqueues overdue pending reminders.
- The stream listener survives Redis restarts and FLUSHDB (re-creates its consumer group from id 0).
- The source fires a reminder one `LEAD` early; the task waits out the rest, so the 1 s scheduler tick
  does not add up to 1 s of lateness. The scheduler runs with a 1 s update interval.
- `pre_send` skips a schedule whose data key is gone or now names another due time (deleted or moved
  after the scheduler fetched it) and claims the send with SET NX EX (two schedulers send once).
  The task's database claim is still the real exactly-once guard.
- Every schedule written or deleted also adds or removes its id in one set, `<prefix>schedule:reminders`,
  in the same script as its data key, so `/jobs/metrics` counts the schedules Redis holds with SCARD
  instead of a SCAN over the keyspace on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from taskiq import AckableMessage, AsyncBroker, ScheduledTask, ScheduleSource, TaskiqScheduler
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.kicker import AsyncKicker
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker

from server.base.settings import Settings
from server.bus.redisconf import client_options

log = logging.getLogger(__name__)

DELIVER_REMINDER = "booking.deliver_reminder"
LEAD = timedelta(seconds=1)
CLAIM_TTL = 3600


# The data key and the index (the set of schedule ids) change together, in one script each way, so the
# set's size is the number of schedules whatever fails or interleaves.
# KEYS: data key, minute list, index[, the old entry's minute list]; ARGV: schedule id, serialized schedule.
_PUT_SCHEDULE = """
if KEYS[4] then redis.call('LREM', KEYS[4], 0, ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
"""
# KEYS: data key, index; ARGV: schedule id. The entry taken (nil if there was none).
_TAKE_SCHEDULE = """
local old = redis.call('GETDEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return old
"""
# KEYS: index, then one data key per id; ARGV: the ids. Makes the index agree with the data keys for
# these ids (each id's check and change are one step, so a concurrent write cannot be undone).
_INDEX_SCHEDULES = """
local added = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    added = added + redis.call('SADD', KEYS[1], id)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return added
"""


def schedule_id(booking_id: uuid.UUID | str) -> str:
    return f"reminder:{booking_id}"


def schedule_index(redis_prefix: str) -> str:
    """The set of the ids of the reminder schedules Redis holds (kept with their data keys)."""
    return f"{redis_prefix}schedule:reminders"


def _connection_kwargs(settings: Settings) -> dict[str, Any]:
    # `timeout`: how long taskiq-redis' blocking pool waits for a free connection (20 s by default).
    return {**client_options(settings), "timeout": settings.db_timeout}


class ReminderBroker(RedisStreamBroker):
    """A stream broker whose listener outlives Redis outages and flushes instead of crashing."""

    async def startup(self) -> None:
        await AsyncBroker.startup(self)
        try:
            await self._declare_consumer_group()
        except (RedisError, OSError) as exc:  # the listener declares it once Redis answers
            log.warning("consumer group not declared at start-up (%s)", type(exc).__name__)

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        backoff = 0.1
        while True:
            try:
                async for message in super().listen():
                    backoff = 0.1
                    yield message
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    log.warning(
                        "consumer group %s is gone (Redis flushed?); re-creating", self.consumer_group_name
                    )
                else:
                    log.warning(
                        "stream listener lost Redis (%s); retrying in %.1fs", type(exc).__name__, backoff
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                try:
                    await self._declare_consumer_group()
                except (RedisError, OSError):
                    continue


def stream_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}taskiq:stream"


def group_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}taskiq:workers"


def make_broker(settings: Settings, *, idle_timeout_ms: int = 60_000) -> ReminderBroker:
    return ReminderBroker(
        settings.redis_url,
        queue_name=stream_name(settings),
        consumer_group_name=group_name(settings),
        # From the start of the stream: messages added while the group did not exist (after FLUSHDB,
        # before the first worker) are still read; an existing group keeps its position.
        consumer_id="0",
        idle_timeout=idle_timeout_ms,
        unacknowledged_lock_timeout=5.0,
        maxlen=100_000,
        xread_block=1000,
        **_connection_kwargs(settings),
    )


async def enqueue_reminder(broker: AsyncBroker, booking_id: uuid.UUID, due_at: datetime) -> None:
    """Put a delivery on the stream now, bypassing the schedule (the task waits out `due_at`)."""
    kicker: AsyncKicker[Any, Any] = AsyncKicker(DELIVER_REMINDER, broker, {})
    await kicker.kiq(booking_id=str(booking_id), due_at=due_at.isoformat())


PendingCheck = Callable[[uuid.UUID, datetime], Awaitable[bool]]


class ReminderSource(ListRedisScheduleSource):
    """The Redis schedule source for reminders: `reminder:<booking id>` schedules, JSON-encoded."""

    def __init__(
        self,
        settings: Settings,
        *,
        is_pending: PendingCheck | None = None,
        broker: AsyncBroker | None = None,
    ) -> None:
        self.key_prefix = f"{settings.redis_prefix}schedule"
        super().__init__(
            settings.redis_url,
            prefix=self.key_prefix,
            serializer=JSONSerializer(),
            **_connection_kwargs(settings),
        )
        self.is_pending = is_pending
        # With a broker, a reminder already due goes straight to the stream: through the schedule it
        # would wait for the scheduler's next read of the source (1-2 s).
        self._broker = broker
        self._claim_prefix = f"{settings.redis_prefix}reminder-claim:"
        self._client = Redis(connection_pool=self._connection_pool)  # one client: no per-call set-up
        self._scan_past = True  # the first get_schedules looks for what fell due while none ran
        self._put = self._client.register_script(_PUT_SCHEDULE)
        self._take = self._client.register_script(_TAKE_SCHEDULE)
        self._index_ids = self._client.register_script(_INDEX_SCHEDULES)
        self.index_key = schedule_index(settings.redis_prefix)

    def redis(self) -> Redis:
        return Redis(connection_pool=self._connection_pool)

    async def close(self) -> None:
        await self._connection_pool.disconnect()  # a broker it was given is its owner's to close

    def data_key(self, booking_id: uuid.UUID | str) -> str:
        return self._get_data_key(schedule_id(booking_id))

    @staticmethod
    def task_for(booking_id: uuid.UUID, due_at: datetime) -> ScheduledTask:
        return ScheduledTask(
            task_name=DELIVER_REMINDER,
            labels={},
            args=[],
            kwargs={"booking_id": str(booking_id), "due_at": due_at.isoformat()},
            schedule_id=schedule_id(booking_id),
            time=due_at - LEAD,
        )

    async def schedule(self, booking_id: uuid.UUID, due_at: datetime, *, fresh: bool = False) -> None:
        """Replace the reminder's schedule under the same id, in the list source's own layout (a data key
        and one list per minute). A new booking (`fresh`) has no older entry: one round trip. A moved one
        first takes the old entry (GETDEL) to find the minute list it sits in: two."""
        task = self.task_for(booking_id, due_at)
        sid = task.schedule_id
        if self._broker is not None and task.time is not None and task.time <= datetime.now(UTC):
            if not fresh:
                await self.delete_schedule(sid)  # an older entry must not fire as well
            await enqueue_reminder(self._broker, booking_id, due_at)
            return
        keys = [self._get_data_key(sid), self._get_time_key(task.time or due_at), self.index_key]
        if not fresh:
            previous = await self._take_schedule(sid)
            if previous is not None and previous.time is not None:
                keys.append(self._get_time_key(previous.time))
        await self._put(keys=keys, args=[sid, self._serializer.dumpb(task.model_dump(mode="json"))])

    async def unschedule(self, booking_id: uuid.UUID) -> None:
        await self.delete_schedule(schedule_id(booking_id))

    async def _take_schedule(self, sid: str) -> ScheduledTask | None:
        """Remove the schedule's data key and its id in the index (one script); the entry it held."""
        old = await self._take(keys=[self._get_data_key(sid), self.index_key], args=[sid])
        if old is None:
            return None
        return ScheduledTask.model_validate(
            self._serializer.loadb(old if isinstance(old, bytes) else old.encode())
        )

    def _list_key(self, task: ScheduledTask) -> str | None:
        if task.cron is not None:
            return self._get_cron_key()
        if task.time is not None:
            return self._get_time_key(task.time)
        return self._get_interval_key() if task.interval else None

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        """The library's add (the reconciler re-adds a lost schedule with it), in one script that also
        indexes the schedule."""
        list_key = self._list_key(schedule)
        if list_key is None:
            raise ValueError(f"schedule {schedule.schedule_id} has no cron, time or interval")
        await self._put(
            keys=[self._get_data_key(schedule.schedule_id), list_key, self.index_key],
            args=[schedule.schedule_id, self._serializer.dumpb(schedule.model_dump(mode="json"))],
        )

    async def delete_schedule(self, schedule_id: str) -> None:
        """The library's delete (also what `post_send` calls once a schedule was sent), with the index."""
        previous = await self._take_schedule(schedule_id)
        list_key = self._list_key(previous) if previous is not None else None
        if list_key is not None:
            await self._client.lrem(list_key, 0, schedule_id)

    async def index_schedules(self, *, batch: int = 500) -> int:
        """Make the index agree with the data keys: add what it lacks (schedules written before it
        existed, by an older version) and drop ids whose data key is gone (deleted by hand). One SCAN
        of the keyspace and one SSCAN of the set, run once when the scheduler starts, never on a
        periodic or request path. The number of ids added."""
        added = 0
        data_prefix = self._get_data_key("")
        ids: list[str] = []

        async def flush() -> None:
            nonlocal added
            if ids:
                keys = [self.index_key, *(self._get_data_key(i) for i in ids)]
                added += int(await self._index_ids(keys=keys, args=ids))
                ids.clear()

        async for key in self._client.scan_iter(match=self._get_data_key(schedule_id("*")), count=1000):
            ids.append(_text(key).removeprefix(data_prefix))
            if len(ids) >= batch:
                await flush()
        await flush()
        async for member in self._client.sscan_iter(self.index_key, count=1000):
            ids.append(_text(member))
            if len(ids) >= batch:
                await flush()
        await flush()
        return added

    def _parse_time_key(self, key: str) -> datetime | None:
        """The minute a `<prefix>:time:<minute>` key holds. The library splits at the second colon, so
        with a prefix that has one (ours always does: `booking:schedule`) no key parsed and the
        start-up look for past schedules found nothing."""
        minute = key.removeprefix(f"{self.key_prefix}:time:")
        try:
            return datetime.strptime(minute, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
        except ValueError:
            return None

    async def get_schedules(self) -> list[ScheduledTask]:
        """The schedules of this minute and the one before, read from their two lists. The library's
        version SCANs every `schedule:time:*` key on every call (its first-run flag is never read), so
        each 1 s tick cost grew with the number of pending reminders. A full SCAN runs once, at
        start-up, for what fell due while no scheduler ran; the reconciler covers anything older."""
        now = datetime.now(UTC)
        async with self.redis() as redis:
            ids: list[bytes | str] = []
            if self._scan_past:
                ids.extend(await self._get_previous_time_schedules())
                self._scan_past = False
            else:
                ids.extend(await redis.lrange(self._get_time_key(now - timedelta(minutes=1)), 0, -1))
            ids.extend(await redis.lrange(self._get_time_key(now), 0, -1))
            unique = list(dict.fromkeys(i.decode() if isinstance(i, bytes) else i for i in ids))
            raw = await redis.mget([self._get_data_key(i) for i in unique]) if unique else []
        return [
            ScheduledTask.model_validate(self._serializer.loadb(r if isinstance(r, bytes) else r.encode()))
            for r in raw
            if r
        ]

    async def pre_send(self, task: ScheduledTask) -> None:
        booking_id, due_at = task.kwargs["booking_id"], task.kwargs["due_at"]
        async with self.redis() as redis:
            raw = await redis.get(self._get_data_key(task.schedule_id))
            if (
                raw is None
                or self._serializer.loadb(raw if isinstance(raw, bytes) else raw.encode())
                .get("kwargs", {})
                .get("due_at")
                != due_at
            ):
                log.info("schedule %s was cancelled or moved after it was fetched; skipped", task.schedule_id)
                raise ScheduledTaskCancelledError()
            if self.is_pending is not None and not await self.is_pending(
                uuid.UUID(booking_id), datetime.fromisoformat(due_at)
            ):
                log.info("reminder %s is no longer pending; skipped", booking_id)
                raise ScheduledTaskCancelledError()
            if not await redis.set(f"{self._claim_prefix}{booking_id}:{due_at}", "1", nx=True, ex=CLAIM_TTL):
                log.info("schedule %s already sent by another scheduler", task.schedule_id)
                raise ScheduledTaskCancelledError()

    async def release(self, task: ScheduledTask) -> None:
        """Give up this scheduler's claim on a send that failed, so a retry is not refused."""
        async with self.redis() as redis:
            await redis.delete(f"{self._claim_prefix}{task.kwargs['booking_id']}:{task.kwargs['due_at']}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ReminderScheduler(TaskiqScheduler):
    """Retries a failed enqueue once (the first command on a pooled connection after a Redis restart
    fails) and then releases the claim; the reconciler enqueues whatever is still pending."""

    async def on_ready(self, source: ScheduleSource, task: ScheduledTask) -> None:
        for attempt in (1, 2):
            try:
                await super().on_ready(source, task)
                return
            except Exception as exc:
                log.warning("sending %s failed (attempt %d): %s", task.schedule_id, attempt, exc)
                if isinstance(source, ReminderSource):
                    with contextlib.suppress(RedisError, OSError):
                        await source.release(task)
                await asyncio.sleep(0.1)
        log.error("schedule %s not sent; the reconciler will enqueue it", task.schedule_id)


def make_scheduler(broker: ReminderBroker, source: ReminderSource) -> TaskiqScheduler:
    return ReminderScheduler(broker=broker, sources=[source])
