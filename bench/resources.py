"""6. Resource bookings: create throughput at concurrency 32 beside the personal create of the same run,
for capacity 1 (the exclusion constraint, one statement) and capacity 5 (the resource's row lock and the
overlap count), and the race figure: 200 creates for one slot of a capacity-5 resource."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from bench.common import BenchUser, CpuMeter
from bench.create import LENGTH, SLOT, Rate, _run, _slots

RACE_CREATES = 200
RACE_CAPACITY = 5


async def seed_resources(database_url: str, n: int, *, capacity: int, label: str) -> list[uuid.UUID]:
    """`n` resources inserted straight into the database."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO resources (name, capacity, buffer_after_minutes) "
            "SELECT $1 || ' ' || g || ' ' || $2, $3, 5 FROM generate_series(1, $4::int) g RETURNING id",
            label,
            uuid.uuid4().hex[:8],
            capacity,
            n,
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def resource_rate(
    urls: list[str],
    users: list[BenchUser],
    resources: list[uuid.UUID],
    *,
    label: str,
    concurrency: int,
    duration: float,
    warmup: float,
    web_pids: Sequence[int] = (),
) -> Rate:
    """Like `create.http_rate`, each booking on a resource: worker `w` books resource `w % len(resources)`
    in slots of its own (never a conflict, so this measures the write path, not refusals)."""
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    owned = _slots(users, concurrency, base)
    counters = [0] * concurrency
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def once(w: int, n: int) -> bool:
            user, _ = owned[w][n % len(owned[w])]
            # A worker's slots are spaced by SLOT; the 5-minute buffer after each stays inside the gap.
            start = base + SLOT * counters[w]
            counters[w] += 1
            body = {
                "title": "Bench",
                "startTime": start.isoformat(),
                "endTime": (start + LENGTH).isoformat(),
                "resourceId": str(resources[w % len(resources)]),
            }
            headers = {"Authorization": f"Bearer {user.token}"}
            async with http.post(f"{urls[w % len(urls)]}/api/booking", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 201

        meter = CpuMeter(web_pids) if web_pids else None
        return await _run(label, concurrency, duration, warmup, once, meter=meter)


def combined(parts: Sequence[Rate]) -> Rate:
    """Several measured stretches as one: counts and seconds added, CPU per create weighted by count."""
    count = sum(p.count for p in parts)
    weight = [p.count + p.errors for p in parts]
    total = sum(weight) or 1

    def cpu(i: int) -> float:
        return sum(p.cpu_ms[i] * w for p, w in zip(parts, weight, strict=True)) / total

    return Rate(
        count,
        sum(p.errors for p in parts),
        sum(p.seconds for p in parts),
        [x for p in parts for x in p.latencies],
        (cpu(0), cpu(1)),
    )


@dataclass
class Race:
    statuses: dict[int, int]
    seconds: float
    max_overlap: int


async def race(database_url: str, urls: list[str], users: list[BenchUser], resource: uuid.UUID) -> Race:
    """RACE_CREATES users at once for one slot, alternating the two web processes."""
    start = (datetime.now(UTC) + timedelta(days=20)).replace(minute=0, second=0, microsecond=0)
    body = {
        "title": "race",
        "startTime": start.isoformat(),
        "endTime": (start + timedelta(hours=1)).isoformat(),
        "resourceId": str(resource),
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(n: int, user: BenchUser) -> int:
            headers = {"Authorization": f"Bearer {user.token}"}
            async with http.post(f"{urls[n % len(urls)]}/api/booking", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one(n, u) for n, u in enumerate(users[:RACE_CREATES])))
        seconds = time.perf_counter() - t0
    conn = await asyncpg.connect(database_url)
    try:
        peak = await conn.fetchval(
            """
            SELECT coalesce(max((
                SELECT count(*) FROM bookings b
                WHERE b.resource_id = a.resource_id AND b.status IN ('scheduled', 'in-progress')
                  AND b.busy_start <= a.busy_start AND b.busy_end > a.busy_start
            )), 0)
            FROM bookings a WHERE a.resource_id = $1 AND a.status IN ('scheduled', 'in-progress')
            """,
            resource,
        )
    finally:
        await conn.close()
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return Race(counts, seconds, int(peak))
