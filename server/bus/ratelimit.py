"""Rate limits in Redis, so they hold across every web process.

A window opens at a key's first hit and lasts `window` seconds (not aligned to the clock, so a burst
cannot straddle a boundary for twice the limit). One Lua call per hit: a MULTI pipeline of the same three
commands cost twice the client CPU (bench/: 144 µs vs 65 µs per hit).

When Redis is down (docs/FAULTS.md) a limit never becomes a 503 or a wait: the caller says what to do.
`"open"` lets the hit through (the per-user API limit: it protects capacity, and an outage of Redis
must not take the API down with it); `"local"` counts in this process instead (login and registration:
brute force stays refused, at up to the limit per process rather than per deployment).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from redis.asyncio import Redis

from actors.errors import RateLimited
from server.bus.redisgate import RedisDown, RedisGate

_HIT = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
return {redis.call('INCR', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""

# The count so far, without counting: for limits that count only failures (a calendar feed's unknown
# tokens), checked before the attempt and hit after a failed one.
_PEEK = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""

WhenDown = Literal["open", "local"]


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


class RateLimiter:
    def __init__(self, redis: Redis, *, prefix: str, gate: RedisGate) -> None:
        self._prefix = prefix
        self._hit = redis.register_script(_HIT)
        self._peek = redis.register_script(_PEEK)
        self._gate = gate
        self.local = LocalWindows()

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
            retry_after = max(1, math.ceil(int(ttl_ms) / 1000)) if int(ttl_ms) > 0 else window
            raise RateLimited(f"rate limit of {limit} per {window}s exceeded for {scope}", retry_after)

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
            retry_after = max(1, math.ceil(int(ttl_ms) / 1000)) if int(ttl_ms) > 0 else window
            raise RateLimited(f"rate limit of {limit} per {window}s exceeded for {scope}", retry_after)
