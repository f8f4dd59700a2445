"""4. List latency (page 1 and the last page) for one user with many bookings in a big table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from bench.common import BenchUser, Progress, pct
from storage import bookings

# The statement the service runs for `GET /api/booking?page&limit` (page and total in one).
OWN_PAGE = bookings.list_query((True, False, False, False)).page
FILL_SQL = """
INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, reminder_minutes_before)
SELECT $1, $2, 'row ' || g, $3::timestamptz + g * interval '1 hour',
       $3::timestamptz + g * interval '1 hour' + interval '30 minutes', NULL
FROM generate_series(0, $4::int - 1) g
"""


@dataclass
class ListResult:
    rows: int
    per_user: int
    load_seconds: float
    http: dict[str, list[float]]
    sql: dict[str, list[float]]


async def load(database_url: str, target: BenchUser, fillers: list[BenchUser], per_user: int) -> float:
    """`per_user` rows for the target and for every filler user (distinct user_seq, non-overlapping times)."""
    started = time.monotonic()
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=400)
    conn = await asyncpg.connect(database_url, command_timeout=3600)
    try:
        async with Progress("bulk-load bookings", per_user * (len(fillers) + 1)) as progress:
            for user in [*fillers, target]:
                await conn.execute(FILL_SQL, user.id, user.seq, base, per_user)
                progress.done += per_user
        await conn.execute("ANALYZE bookings")
    finally:
        await conn.close()
    return time.monotonic() - started


async def latency(
    url: str, database_url: str, target: BenchUser, *, per_user: int, samples: int, limit: int = 10
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    pages = {"page 1": 1, f"page {per_user // limit} (last)": max(1, per_user // limit)}
    http_times: dict[str, list[float]] = {}
    sql_times: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {target.token}"}
    async with aiohttp.ClientSession() as http:
        conn = await asyncpg.connect(database_url)
        try:
            for name, page in pages.items():
                times: list[float] = []
                raw: list[float] = []
                async with Progress(f"list {name}", samples) as progress:
                    for i in range(samples + 10):
                        t0 = time.perf_counter()
                        async with http.get(
                            f"{url}/api/booking?page={page}&limit={limit}", headers=headers
                        ) as resp:
                            body = await resp.json()
                            if resp.status != 200 or not body.get("data"):
                                raise RuntimeError(f"list failed: {resp.status} {str(body)[:200]}")
                        t1 = time.perf_counter()
                        await OWN_PAGE.fetch(conn, user_id=target.id, offset=(page - 1) * limit, limit=limit)
                        t2 = time.perf_counter()
                        if i >= 10:  # warm-up
                            times.append(t1 - t0)
                            raw.append(t2 - t1)
                            progress.done += 1
                http_times[name] = times
                sql_times[name] = raw
        finally:
            await conn.close()
    return http_times, sql_times


def p99(values: list[float]) -> float:
    return pct(values, 0.99)
