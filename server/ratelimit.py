"""Fixed-window rate limits in Redis, so they hold across every web process."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from actors.errors import RateLimited


class RateLimiter:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def hit(self, scope: str, key: str, *, limit: int, window: int) -> None:
        """Count one hit; raise RateLimited (with seconds until the window ends) past `limit`."""
        now = time.time()
        bucket = int(now // window)
        redis_key = f"{self._prefix}rl:{scope}:{key}:{bucket}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window + 1)
            count, _ = await pipe.execute()
        if int(count) > limit:
            retry_after = max(1, int((bucket + 1) * window - now + 0.999))
            raise RateLimited(f"rate limit of {limit} per {window}s exceeded for {scope}", retry_after)
