"""1. create-booking over HTTP at concurrency 32, next to the same database work straight through asyncpg."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.common import BenchUser, CpuMeter, Progress, pct
from storage.bookings import CREATE_BOOKING

SLOT = timedelta(minutes=30)
LENGTH = timedelta(minutes=20)
REMINDER = timedelta(minutes=10)


class NoReset(asyncpg.Connection):
    """Raw asyncpg without the pool's per-release reset round trip (the service disables it too)."""

    def get_reset_query(self) -> str:
        return ""


@dataclass
class Rate:
    count: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_ms: tuple[float, float] = (math.nan, math.nan)  # (client-side service, PostgreSQL+Redis) per create

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return pct(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)


def _slots(
    users: list[BenchUser], concurrency: int, base: datetime
) -> list[list[tuple[BenchUser, list[int]]]]:
    """Each worker owns its own users (so one user's creates never race) and a slot counter per user."""
    return [[(u, [0]) for u in users[i::concurrency]] for i in range(concurrency)]


async def _run(
    label: str,
    concurrency: int,
    duration: float,
    warmup: float,
    once: Any,
    limit: int | None = None,
    meter: CpuMeter | None = None,
) -> Rate:
    """Call `once(worker, n)` from `concurrency` workers for warmup + duration seconds; time the latter."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + warmup + duration
    async with Progress(label) as progress:

        async def worker(w: int) -> None:
            nonlocal errors
            n = 0
            while time.monotonic() < stop_at and (limit is None or progress.done < limit):
                t0 = time.perf_counter()
                ok = await once(w, n)
                n += 1
                if measuring:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                        progress.done += 1
                    else:
                        errors += 1
                        progress.errors += 1

        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        if meter:
            meter.start()
        started = time.monotonic()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        cpu = meter.stop(len(latencies) + errors) if meter else (math.nan, math.nan)
    return Rate(len(latencies), errors, elapsed, latencies, cpu)


async def raw_rate(
    database_url: str, users: list[BenchUser], *, concurrency: int, pool: int, duration: float, warmup: float
) -> Rate:
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    owned = _slots(users, concurrency, base)
    db = await asyncpg.create_pool(database_url, min_size=pool, max_size=pool, connection_class=NoReset)
    try:

        async def once(w: int, n: int) -> bool:
            user, counter = owned[w][n % len(owned[w])]
            start = base + SLOT * counter[0]
            counter[0] += 1
            # The very statement (and parameters) the service runs for a create without Idempotency-Key:
            # booking + audit row + reminder row, atomically.
            args = CREATE_BOOKING.args(
                {
                    "actor_id": user.id,
                    "reminder_due_at": start - REMINDER,
                    "id": uuid.uuid4(),
                    "user_id": user.id,
                    "user_seq": user.seq,
                    "title": "Bench",
                    "description": None,
                    "location": None,
                    "notes": None,
                    "start_time": start,
                    "end_time": start + LENGTH,
                    "reminder_minutes_before": 10,
                    "attendees": "[]",  # jsonb as text: this raw pool has no JSON codec
                }
            )
            async with db.acquire() as conn:
                return await conn.fetchrow(CREATE_BOOKING.sql, *args) is not None

        return await _run("raw asyncpg", concurrency, duration, warmup, once, meter=CpuMeter())
    finally:
        await db.close()


async def http_rate(
    urls: list[str],
    users: list[BenchUser],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    web_pids: Sequence[int] = (),
    path: str = "/api/booking",
) -> Rate:
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    owned = _slots(users, concurrency, base)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def once(w: int, n: int) -> bool:
            user, counter = owned[w][n % len(owned[w])]
            start = base + SLOT * counter[0]
            counter[0] += 1
            body = {"title": "Bench", "startTime": start.isoformat(), "endTime": (start + LENGTH).isoformat()}
            headers = {"Authorization": f"Bearer {user.token}"}
            async with http.post(f"{urls[w % len(urls)]}{path}", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 201

        meter = CpuMeter(web_pids) if web_pids else None
        return await _run("HTTP create", concurrency, duration, warmup, once, meter=meter)
