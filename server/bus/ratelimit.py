"""Rate limits in Redis, so they hold across every web process.

A window opens at a key's first hit and lasts `window` seconds (not aligned to the clock, so a burst
cannot straddle a boundary for twice the limit). One Lua call per hit: a MULTI pipeline of the same three
commands cost twice the client CPU (bench/: 144 µs vs 65 µs per hit).

When Redis is down (docs/FAULTS.md) a limit never becomes a 503 or a wait: the caller says what to do.
`"open"` lets the hit through (the per-user API limit: it protects capacity, and an outage of Redis
must not take the API down with it); `"local"` counts in this process instead (login and registration:
brute force stays refused, at up to the limit per process rather than per deployment).

The per-user API limit is hit on every authenticated call, so it is counted in batches (`BatchedWindows`):
a process admits on its own count plus the last global count Redis told it, and adds its count to
Redis in one call every `batch` hits or `flush` seconds, whichever comes first. Over-admission is
bounded: a process admits at most `batch` hits between two answers from Redis, so once the global count
reaches the limit every process refuses within `batch` more hits — at most `limit + batch * processes`
per window in the worst case, exactly `limit` with one process (docs/SECURITY.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from redis.asyncio import Redis

from actors.domain.errors import RateLimited
from server.bus.redisgate import RedisDown, RedisGate

_HIT = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
return {redis.call('INCR', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""

# A batch of hits: `ARGV[2]` at once (the batched per-user API limit).
_ADD = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
return {redis.call('INCRBY', KEYS[1], ARGV[2]), redis.call('PTTL', KEYS[1])}
"""

# The count so far, without counting: for limits that count only failures (a calendar feed's unknown
# tokens), checked before the attempt and hit after a failed one.
_PEEK = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""

WhenDown = Literal["open", "local"]


def _refused(scope: str, limit: int, window: int, ttl_ms: int) -> RateLimited:
    """The refusal, with the whole seconds until the window ends (the window itself when Redis gave
    no expiry)."""
    retry_after = max(1, math.ceil(ttl_ms / 1000)) if ttl_ms > 0 else window
    return RateLimited(f"rate limit of {limit} per {window}s exceeded for {scope}", retry_after)


class LocalWindows:
    """The same windows counted in this process: the fallback while Redis is down. Bounded: past
    `max_keys` live windows the table is reset (a flood of distinct keys costs precision, not memory)."""

    def __init__(self, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window end, hits)
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str, window: int) -> tuple[int, int]:
        """(hits in the window including this one, milliseconds until it ends)."""
        now = self._clock()
        ends, count = self._windows.get(key, (0.0, 0))
        if ends <= now:
            if len(self._windows) >= self._max_keys:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
                if len(self._windows) >= self._max_keys:
                    self._windows.clear()
            ends, count = now + window, 0
        self._windows[key] = (ends, count + 1)
        return count + 1, math.ceil((ends - now) * 1000)

    def peek(self, key: str) -> tuple[int, int]:
        """(hits in the live window, milliseconds until it ends); (0, 0) with none."""
        now = self._clock()
        ends, count = self._windows.get(key, (0.0, 0))
        return (count, math.ceil((ends - now) * 1000)) if ends > now else (0, 0)


class _Batch:
    __slots__ = ("ends", "flushed_at", "flushing", "known", "pending")

    def __init__(self, ends: float, now: float) -> None:
        self.ends = ends  # when the window ends, as Redis last said (or first hit + window)
        self.known = 0  # the global count at Redis' last answer, this process' flushed hits included
        self.pending = 0  # admitted here, not yet added in Redis
        self.flushed_at = now
        self.flushing = False


class BatchedWindows:
    """Per-key windows counted here and reconciled with Redis in batches (see the module docstring).
    Bounded like `LocalWindows`: past `max_keys` live keys the ended ones go, then all."""

    def __init__(
        self, *, batch: int, flush: float, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.batch = batch
        self.flush = flush
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[str, _Batch] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, key: str, window: int, limit: int) -> tuple[_Batch, int | None]:
        """Count one hit here: (its state, None) when admitted, else (state, ms until the window ends)."""
        now = self._clock()
        state = self._windows.get(key)
        if state is None or state.ends <= now:
            if state is None and len(self._windows) >= self._max_keys:
                self._windows = {k: v for k, v in self._windows.items() if v.ends > now}
                if len(self._windows) >= self._max_keys:
                    self._windows.clear()
            state = self._windows[key] = _Batch(now + window, now)  # a first hit flushes at once
            state.flushed_at = -math.inf
        if state.known + state.pending >= limit:
            return state, math.ceil((state.ends - now) * 1000)
        state.pending += 1
        return state, None

    def due(self, state: _Batch) -> bool:
        return not state.flushing and (
            state.pending >= self.batch or self._clock() - state.flushed_at >= self.flush
        )

    def answered(self, state: _Batch, sent: int, count: int, ttl_ms: int) -> None:
        now = self._clock()
        state.pending -= sent
        state.known = count
        state.flushed_at = now
        if ttl_ms > 0:
            state.ends = now + ttl_ms / 1000

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)


class RateLimiter:
    def __init__(
        self, redis: Redis, *, prefix: str, gate: RedisGate, batch: int = 1, flush: float = 0.0
    ) -> None:
        self._prefix = prefix
        self._hit = redis.register_script(_HIT)
        self._add = redis.register_script(_ADD)
        self._peek = redis.register_script(_PEEK)
        self._gate = gate
        self.local = LocalWindows()
        self.batched = BatchedWindows(batch=batch, flush=flush)

    async def hit_batched(self, scope: str, key: str, *, limit: int, window: int) -> None:
        """`hit` for a limit counted in batches (module docstring); Redis down lets the hit through, as
        `hit(when_down="open")` does."""
        name = f"{self._prefix}rl:{scope}:{key}"
        state, refused_ms = self.batched.admit(name, window, limit)
        if refused_ms is not None:
            raise _refused(scope, limit, window, refused_ms)
        if not self.batched.due(state):
            return
        sent = state.pending
        state.flushing = True
        try:
            count, ttl_ms = await self._gate.call(
                lambda: self._add(keys=[name], args=[window, sent]), "rate limit"
            )
        except RedisDown:
            self.batched.forget(name)  # open, as the unbatched limit: the next hit asks Redis again
            return
        finally:
            state.flushing = False
        self.batched.answered(state, sent, int(count), int(ttl_ms))
        if int(count) > limit:  # other processes' hits filled the window meanwhile
            raise _refused(scope, limit, window, int(ttl_ms))

    async def hit(self, scope: str, key: str, *, limit: int, window: int, when_down: WhenDown) -> None:
        """Count one hit; raise RateLimited (with the seconds until the window ends) past `limit`."""
        name = f"{self._prefix}rl:{scope}:{key}"
        try:
            count, ttl_ms = await self._gate.call(lambda: self._hit(keys=[name], args=[window]), "rate limit")
        except RedisDown:
            if when_down == "open":
                return
            count, ttl_ms = self.local.hit(name, window)
        if int(count) > limit:
            raise _refused(scope, limit, window, int(ttl_ms))

    async def check(self, scope: str, key: str, *, limit: int, window: int, when_down: WhenDown) -> None:
        """Raise RateLimited when `limit` hits are already counted in the window, without counting this
        one: a limit on failures checks first and hits only when the attempt failed."""
        name = f"{self._prefix}rl:{scope}:{key}"
        try:
            count, ttl_ms = await self._gate.call(lambda: self._peek(keys=[name], args=[]), "rate limit")
        except RedisDown:
            if when_down == "open":
                return
            count, ttl_ms = self.local.peek(name)
        if int(count) >= limit:
            raise _refused(scope, limit, window, int(ttl_ms))
