"""Taskiq through Redis: the broker and the enqueue of a reminder delivery, in one place.

Designed around the library facts in docs/REMINDERS.md (SPEC §9):
- `RedisStreamBroker` (consumer group + XACK), so a killed worker's message is not lost; its reclaim
  is slow (idle time + new traffic), so the scheduler also enqueues again a reminder still pending a
  lease after its enqueue (server/worker/tasks.py `ReminderScheduler`).
- The stream listener survives Redis restarts and FLUSHDB (re-creates its consumer group from id 0).
- PostgreSQL's pending `reminders` rows are the schedule; Redis holds only the stream. A delivery is
  enqueued one `LEAD` early and the task waits out the rest. The task's database claim is the
  exactly-once guard, so an enqueue made twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from taskiq import AckableMessage, AsyncBroker
from taskiq.kicker import AsyncKicker
from taskiq_redis import RedisStreamBroker

from server.base.settings import Settings
from server.bus.redisconf import client_options

log = logging.getLogger(__name__)

DELIVER_REMINDER = "booking.deliver_reminder"
LEAD = timedelta(seconds=1)


# A previous version kept each reminder's schedule in Redis under `<prefix>schedule:` (taskiq's
# ListRedisScheduleSource: data keys, minute lists, an index set). Nothing reads them now.
OLD_SCHEDULE_MATCH = "schedule:*"


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
    """Put a delivery on the stream now (the task waits out the rest until `due_at`)."""
    kicker: AsyncKicker[Any, Any] = AsyncKicker(DELIVER_REMINDER, broker, {})
    await kicker.kiq(booking_id=str(booking_id), due_at=due_at.isoformat())


class DirectEnqueue:
    """The web process's fast path: a reminder already due when its booking commits (its time passed at
    creation, or an edit made it due now) goes straight to the stream instead of waiting for the
    scheduler's next tick. Anything due later is left to the scheduler, which reads PostgreSQL."""

    def __init__(self, broker: AsyncBroker) -> None:
        self._broker = broker

    @staticmethod
    def is_due(due_at: datetime, now: datetime | None = None) -> bool:
        return due_at - LEAD <= (now or datetime.now(UTC))

    async def enqueue(self, booking_id: uuid.UUID, due_at: datetime) -> None:
        await enqueue_reminder(self._broker, booking_id, due_at)


async def drop_old_schedule(redis: Redis, prefix: str, *, batch: int = 500) -> int:
    """Delete what a previous version's Redis schedule left (`<prefix>schedule:*`): run once when the
    scheduler starts (one SCAN, never on a periodic path). The number of keys deleted."""
    deleted = 0
    keys: list[bytes | str] = []
    async for key in redis.scan_iter(match=f"{prefix}{OLD_SCHEDULE_MATCH}", count=1000):
        keys.append(key)
        if len(keys) >= batch:
            deleted += int(await redis.unlink(*keys))
            keys.clear()
    if keys:
        deleted += int(await redis.unlink(*keys))
    return deleted
