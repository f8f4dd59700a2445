"""Redis on the request path: bounded in time, and skipped for a moment once it is found down.

Nothing a request needs to succeed lives only in Redis: rate-limit counters, event fan-out to other
processes and the Redis copy of a reminder all degrade (docs/FAULTS.md). So a request must not wait on
a Redis that is gone or frozen. Every request-path call goes through one `RedisGate` per process:
- each call is bounded by `timeout` (REDIS_TIMEOUT), connect included;
- a failure opens the gate for `pause` seconds (REDIS_SKIP_SECONDS): calls are skipped at once
  (`RedisDown`) instead of each paying the timeout;
- when the pause ends, one call probes Redis while the others keep skipping (half-open); success
  closes the gate, failure opens it for another pause.
Background loops (the event listener, the worker, the scheduler) keep their own retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from redis.exceptions import RedisError

from actors.reminders import ReminderKick

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisDown(Exception):
    """Redis was skipped (the gate is open) or failed just now; the caller degrades."""


class RedisGate:
    def __init__(self, *, timeout: float, pause: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.pause = pause
        self._clock = clock
        self._skip_until = 0.0
        self._failing = False
        self.skipped = 0  # calls not made because the gate was open (for tests and metrics)

    @property
    def down(self) -> bool:
        return self._failing

    async def call(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        """`await make()` within the timeout; RedisDown when skipped or when Redis fails."""
        now = self._clock()
        if now < self._skip_until:
            self.skipped += 1
            raise RedisDown(f"{what}: Redis skipped for another {self._skip_until - now:.2f}s")
        if self._failing:  # this call probes; concurrent ones keep skipping until it answers
            self._skip_until = now + self.pause
        try:
            async with asyncio.timeout(self.timeout):
                result = await make()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc, what)
            raise RedisDown(f"{what}: {type(exc).__name__}") from exc
        self.answered()
        return result

    def answered(self) -> None:
        """Redis answered (a call here, or the event listener subscribing again): close the gate now
        rather than at the end of the pause, so no more events are skipped than must be."""
        if self._failing:
            self._failing = False
            self._skip_until = 0.0
            log.warning("Redis answers again; request-path calls resume")

    def _trip(self, exc: BaseException, what: str) -> None:
        if not self._failing:
            log.warning(
                "Redis failed during %s (%s); request-path Redis calls are skipped for %.1fs at a time "
                "until it answers (rate limits degrade, remote sockets miss events, the scheduler "
                "enqueues due reminders)",
                what,
                type(exc).__name__,
                self.pause,
            )
        self._failing = True
        self._skip_until = self._clock() + self.pause


class GatedKick:
    """The fast path of a reminder already due, behind the gate: a booking's commit never waits on Redis
    for it; the row is the schedule and the scheduler enqueues what was skipped once its lease passed. A
    skip is not raised: the gate has already warned once for the outage, and a warning per booking would
    flood the log."""

    def __init__(self, kick: ReminderKick, gate: RedisGate) -> None:
        self._kick = kick
        self._gate = gate

    def is_due(self, due_at: datetime, now: datetime | None = None) -> bool:
        return self._kick.is_due(due_at, now)

    async def enqueue(self, booking_id: uuid.UUID, due_at: datetime) -> None:
        try:
            await self._gate.call(lambda: self._kick.enqueue(booking_id, due_at), "reminder enqueue")
        except RedisDown as exc:
            log.info("due reminder for %s not enqueued (%s); the scheduler will", booking_id, exc)
