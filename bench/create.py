"""1. create-booking over HTTP at concurrency 32, next to the same database work straight through asyncpg."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.common import BenchUser, Progress, pct

SLOT = timedelta(minutes=30)
LENGTH = timedelta(minutes=20)

INSERT_BOOKING = """
INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, reminder_minutes_before)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT ON CONSTRAINT ex_bookings_no_overlap DO NOTHING
RETURNING *
"""
INSERT_AUDIT = """
INSERT INTO audit_log (actor_id, action, entity, entity_id, before, after)
VALUES ($1, 'create', 'booking', $2, NULL, $3::jsonb)
"""
SELECT_REMINDER = "SELECT * FROM reminders WHERE booking_id = $1"
ARM_REMINDER = """
INSERT INTO reminders (booking_id, user_id, start_time, due_at, state, sent_at)
VALUES ($1, $2, $3, $4, 'pending', NULL)
ON CONFLICT (booking_id) DO UPDATE SET user_id = excluded.user_id, start_time = excluded.start_time,
  due_at = excluded.due_at, state = excluded.state, sent_at = excluded.sent_at, updated_at = now()
"""


@dataclass
class Rate:
    count: int
    errors: int
    seconds: float
    latencies: list[float]

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
    label: str, concurrency: int, duration: float, warmup: float, once: Any, limit: int | None = None
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
        started = time.monotonic()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    return Rate(len(latencies), errors, elapsed, latencies)


def _snapshot(row: asyncpg.Record) -> str:
    def enc(v: Any) -> Any:
        return v.isoformat() if isinstance(v, datetime) else str(v) if v is not None else None

    return json.dumps({k: enc(v) if not isinstance(v, int | str) else v for k, v in row.items()})


async def raw_rate(
    database_url: str, users: list[BenchUser], *, concurrency: int, pool: int, duration: float, warmup: float
) -> Rate:
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    owned = _slots(users, concurrency, base)
    db = await asyncpg.create_pool(database_url, min_size=pool, max_size=pool)
    try:

        async def once(w: int, n: int) -> bool:
            user, counter = owned[w][n % len(owned[w])]
            start = base + SLOT * counter[0]
            counter[0] += 1
            async with db.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    INSERT_BOOKING, user.id, user.seq, "Bench", start, start + LENGTH, 10
                )
                if row is None:
                    return False
                await conn.execute(INSERT_AUDIT, user.id, row["id"], _snapshot(row))
                await conn.fetchrow(SELECT_REMINDER, row["id"])
                await conn.execute(ARM_REMINDER, row["id"], user.id, start, start - timedelta(minutes=10))
            return True

        return await _run("raw asyncpg", concurrency, duration, warmup, once)
    finally:
        await db.close()


async def http_rate(
    urls: list[str], users: list[BenchUser], *, concurrency: int, duration: float, warmup: float
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
            async with http.post(f"{urls[w % len(urls)]}/api/booking", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 201

        return await _run("HTTP create", concurrency, duration, warmup, once)
