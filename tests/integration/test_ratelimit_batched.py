"""The per-user API limit counted in batches (server/bus/ratelimit.py, docs/SECURITY.md): exact in one
process, over-admission within `limit + batch * processes` across processes, open when Redis is down."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from actors.domain.errors import RateLimited
from server.bus.ratelimit import RateLimiter
from server.bus.redisgate import RedisGate

Client = TestClient[Any, Any]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def limiter(redis: Redis, prefix: str, *, batch: int, flush: float = 60.0) -> RateLimiter:
    return RateLimiter(redis, prefix=prefix, gate=RedisGate(timeout=2.0, pause=1.0), batch=batch, flush=flush)


async def admitted(limiter: RateLimiter, key: str, *, limit: int) -> bool:
    try:
        await limiter.hit_batched("api-user", key, limit=limit, window=86400)
    except RateLimited as exc:
        assert 86000 <= exc.retry_after <= 86400
        return False
    return True


async def test_one_process_admits_exactly_the_limit(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    one = limiter(redis, prefix, batch=10)
    results = [await admitted(one, "u1", limit=25) for _ in range(40)]
    assert results == [True] * 25 + [False] * 15
    # Redis holds every admitted hit up to the last batch boundary (the rest are pending here).
    assert 20 <= int(await redis.get(f"{prefix}rl:api-user:u1") or 0) <= 25
    assert await admitted(one, "u2", limit=25)  # another user has a budget of its own


async def test_a_fresh_process_learns_the_global_count_on_its_first_hit(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    await redis.set(f"{prefix}rl:api-user:u1", 30, ex=86400)  # spent by other processes
    fresh = limiter(redis, prefix, batch=10)
    assert await admitted(fresh, "u1", limit=30) is False


async def test_two_processes_over_admit_within_the_documented_bound(redis: Redis, redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    limit, batch = 50, 8
    other = Redis.from_url(redis_url)
    try:
        a, b = limiter(redis, prefix, batch=batch), limiter(other, prefix, batch=batch)
        passed = 0
        for n in range(300):  # uneven interleaving: a takes two of every three hits
            passed += await admitted(b if n % 3 == 2 else a, "u1", limit=limit)
        assert limit <= passed <= limit + batch * 2
        # Both refuse from now on.
        assert not await admitted(a, "u1", limit=limit) and not await admitted(b, "u1", limit=limit)
    finally:
        await other.aclose()


async def test_the_flush_interval_sends_a_small_count_too(redis: Redis) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    now = [0.0]
    one = limiter(redis, prefix, batch=100, flush=1.0)
    one.batched._clock = lambda: now[0]  # a pure-logic clock; Redis is real
    for _ in range(3):
        assert await admitted(one, "u1", limit=10)
    assert int(await redis.get(f"{prefix}rl:api-user:u1") or 0) == 1  # the first hit, at once
    now[0] = 1.5
    assert await admitted(one, "u1", limit=10)
    assert int(await redis.get(f"{prefix}rl:api-user:u1") or 0) == 4


async def test_with_redis_down_the_batched_limit_stays_open() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        down = limiter(dead, "t:", batch=1)
        for _ in range(10):  # never a 503 and never a 429, as the unbatched limit with when_down="open"
            await down.hit_batched("api-user", "u1", limit=2, window=60)
        batched = limiter(dead, "t:", batch=10)
        for _ in range(10):
            await batched.hit_batched("api-user", "u1", limit=2, window=60)
    finally:
        await dead.aclose()


async def test_rest_answers_429_with_retry_after_past_the_limit_in_every_web_process(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    """Two apps on one Redis prefix are two web processes: each admits within the bound."""
    first = await make_client(api_rate_per_user=4, api_rate_window=86400, api_rate_batch=2)
    resp = await first.post(
        "/api/auth/register",
        json={"email": f"b-{uuid.uuid4().hex}@example.com", "password": "x" * 12, "name": "B"},
    )
    headers = {"Authorization": f"Bearer {(await resp.json())['accessToken']}"}
    statuses = [(await first.get("/api/booking", headers=headers)).status for _ in range(5)]
    assert statuses == [200] * 4 + [429]
    refused = await first.get("/api/booking", headers=headers)
    assert refused.status == 429 and 86000 <= int(refused.headers["Retry-After"]) <= 86400
    second = await make_client(api_rate_per_user=4, api_rate_window=86400, api_rate_batch=2)
    # The second process learns the spent budget at its first hit; what the first had not yet added
    # in Redis it may admit again, within the bound (at most `batch` past the limit per process).
    later = [(await second.get("/api/booking", headers=headers)).status for _ in range(3)]
    assert later.count(200) <= 2 and later[-2:] == [429, 429]
