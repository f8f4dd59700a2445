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

from actors.reminders import ReminderSchedule

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
                "until it answers (rate limits degrade, remote sockets miss events, the reconciler "
                "re-schedules reminders)",
                what,
                type(exc).__name__,
                self.pause,
            )
        self._failing = True
        self._skip_until = self._clock() + self.pause


class GatedSchedule:
    """The reminder schedule source behind the gate: a booking's commit never waits on Redis for it;
    PostgreSQL holds the intent and the reconciler schedules what was skipped. A skip is not raised:
    the gate has already warned once for the outage, and a warning per booking would flood the log."""

    def __init__(self, schedule: ReminderSchedule, gate: RedisGate) -> None:
        self._schedule = schedule
        self._gate = gate

    async def schedule(self, booking_id: uuid.UUID, due_at: datetime, *, fresh: bool = False) -> None:
        try:
            await self._gate.call(
                lambda: self._schedule.schedule(booking_id, due_at, fresh=fresh), "reminder schedule"
            )
        except RedisDown as exc:
            log.info("reminder for %s not scheduled in Redis (%s); the reconciler will", booking_id, exc)

    async def unschedule(self, booking_id: uuid.UUID) -> None:
        try:
            await self._gate.call(lambda: self._schedule.unschedule(booking_id), "reminder unschedule")
        except RedisDown as exc:
            log.info("reminder for %s not unscheduled in Redis (%s); the task re-checks", booking_id, exc)
