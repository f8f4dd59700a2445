"""Process CPU per call of single pieces of a create, in isolation (docs/BENCHMARKS.md "Second pass"):

    .venv/bin/python -m bench.pieces [--redis-url redis://127.0.0.1:6379/0] [--rounds 3]

The per-user API limit (one Lua call per hit vs counted in batches) against the real Redis, access-token
verification (PyJWT vs the per-token cache), and the create body's JSON + marshmallow load and the
booking view's JSON dump. CPU time (`time.process_time`), so a busy machine moves it less than a rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from actors.services.security import TokenCodec
from handlers.bookings import _create
from server.base.json import dumps
from server.bus.ratelimit import RateLimiter
from server.bus.redisgate import RedisGate

USERS = 256


async def limiter(redis_url: str, hits: int = 4000) -> dict[str, float]:
    redis = Redis.from_url(redis_url)
    prefix = f"bench-pieces-{uuid.uuid4().hex[:8]}:"
    limit = RateLimiter(redis, prefix=prefix, gate=RedisGate(timeout=2.0, pause=1.0), batch=10, flush=5.0)
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    out: dict[str, float] = {}
    try:
        for name in ("hit", "hit_batched"):
            started = time.process_time()
            for n in range(hits):
                user = users[n % USERS]
                if name == "hit":
                    await limit.hit("api-user", user, limit=10**9, window=60, when_down="open")
                else:
                    await limit.hit_batched("api-user", user, limit=10**9, window=60)
            out[f"API limit {name}"] = (time.process_time() - started) / hits * 1e6
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    return out


def per_call(fn: Callable[[], Any], calls: int = 20_000) -> float:
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls * 1e6


def cpu_only() -> dict[str, float]:
    def codec(cache_size: int) -> TokenCodec:
        return TokenCodec(
            access_secret="a" * 40,
            refresh_secret="b" * 40,
            access_ttl=900,
            refresh_ttl=9000,
            cache_size=cache_size,
        )

    cached, uncached = codec(10_000), codec(0)
    tokens = [cached.issue("access", uuid.uuid4())[0] for _ in range(USERS)]
    it = iter(range(10**9))
    body = json.dumps(
        {"title": "Sync", "startTime": "2027-01-10T10:00:00Z", "endTime": "2027-01-10T11:00:00Z"}
    )
    now = datetime.now(UTC)
    view = {
        "id": uuid.uuid4(), "userId": uuid.uuid4(), "title": "Sync", "startTime": now,
        "endTime": now + timedelta(hours=1), "status": "confirmed", "version": 1, "notes": None,
        "reminderMinutesBefore": 10, "createdAt": now, "updatedAt": now,
    }  # fmt: skip
    return {
        "JWT decode, PyJWT": per_call(lambda: uncached.decode(tokens[next(it) % USERS], "access")),
        "JWT decode, cached": per_call(lambda: cached.decode(tokens[next(it) % USERS], "access")),
        "body json.loads": per_call(lambda: json.loads(body)),
        "body json.loads + marshmallow load": per_call(lambda: _create.load(json.loads(body))),
        "view dumps": per_call(lambda: dumps(view)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL")
        or os.environ.get("TEST_REDIS_URL")
        or "redis://127.0.0.1:6379/0",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for n in range(args.rounds):
        figures = {**asyncio.run(limiter(args.redis_url)), **cpu_only()}
        print(f"round {n + 1}: " + " | ".join(f"{k} {v:.1f} µs" for k, v in figures.items()))


if __name__ == "__main__":
    main()
