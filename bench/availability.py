"""7. Availability: `slots` over 31 days of a resource with many bookings in a big table, and `next` with
the first free slot 90 days out (the bookings fill the 90 days back to back)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from bench import listing
from bench.common import BenchUser, Progress
from storage import availability as store

BUSY_DAYS = 90
FILL_RESOURCE_SQL = """
INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, reminder_minutes_before,
                      resource_id, resource_seq, busy_start, busy_end, resource_exclusive)
SELECT $1, $2, 'busy ' || g, $3::timestamptz + g * $5::interval, $3::timestamptz + (g + 1) * $5::interval,
       NULL, $6, $7, $3::timestamptz + g * $5::interval, $3::timestamptz + (g + 1) * $5::interval, true
FROM generate_series(0, $4::int - 1) g
"""


@dataclass
class AvailabilityResult:
    bookings: int
    table_rows: int
    slots_http: list[float]
    next_http: list[float]
    busy_sql: list[float]
    next_day: float  # days from the first booking to the slot `next` found


async def load(
    database_url: str,
    owner: BenchUser,
    fillers: list[BenchUser],
    *,
    bookings: int,
    table_rows: int,
    per_user: int,
) -> tuple[uuid.UUID, int, datetime, int]:
    """A capacity-1 resource open around the clock, `bookings` back-to-back bookings of it over BUSY_DAYS
    days from tomorrow, and personal bookings of `fillers` until the table holds `table_rows` rows."""
    base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    conn = await asyncpg.connect(database_url, command_timeout=3600)
    try:
        row = await conn.fetchrow(
            "INSERT INTO resources (name, capacity, time_zone) VALUES ($1, 1, 'UTC') RETURNING id, seq",
            f"Bench room {uuid.uuid4().hex[:8]}",
        )
        if row is None:
            raise RuntimeError("INSERT ... RETURNING returned no row")
        await conn.execute(
            FILL_RESOURCE_SQL,
            owner.id,
            owner.seq,
            base,
            bookings,
            timedelta(days=BUSY_DAYS) / bookings,
            row["id"],
            row["seq"],
        )
        have = int(await conn.fetchval("SELECT count(*) FROM bookings"))
    finally:
        await conn.close()
    if have < table_rows and fillers:
        need = (table_rows - have) // per_user
        await listing.load(database_url, fillers[0], fillers[1 : max(1, need)], per_user)
        conn = await asyncpg.connect(database_url)
        try:
            have = int(await conn.fetchval("SELECT count(*) FROM bookings"))
        finally:
            await conn.close()
    return row["id"], row["seq"], base, have


async def latency(
    url: str,
    database_url: str,
    caller: BenchUser,
    resource_id: uuid.UUID,
    resource_seq: int,
    base: datetime,
    *,
    samples: int,
) -> tuple[list[float], list[float], list[float], float]:
    headers = {"Authorization": f"Bearer {caller.token}"}
    z = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    window = (base + timedelta(days=60), base + timedelta(days=91))
    slots_q = (
        f"{url}/api/availability/slots?resourceId={resource_id}"
        f"&from={z(window[0])}&to={z(window[1])}&duration=60"
    )
    next_q = f"{url}/api/availability/next?resourceId={resource_id}&duration=60&step=15&after={z(base)}"
    slots_t: list[float] = []
    next_t: list[float] = []
    sql_t: list[float] = []
    found_day = 0.0
    async with aiohttp.ClientSession() as http:
        conn = await asyncpg.connect(database_url)
        try:
            for name, query, times in (
                ("slots, 31 days", slots_q, slots_t),
                ("next, 90 days out", next_q, next_t),
            ):
                async with Progress(f"availability {name}", samples) as progress:
                    for i in range(samples + 5):
                        t0 = time.perf_counter()
                        async with http.get(query, headers=headers) as resp:
                            body = await resp.json()
                            if resp.status != 200:
                                raise RuntimeError(f"{name} failed: {resp.status} {str(body)[:200]}")
                        if i >= 5:  # warm-up
                            times.append(time.perf_counter() - t0)
                            progress.done += 1
                        if body.get("slot"):
                            start = datetime.fromisoformat(body["slot"]["start"].replace("Z", "+00:00"))
                            found_day = (start - base) / timedelta(days=1)
            for _ in range(samples):  # the busy read slots runs, on its own
                t0 = time.perf_counter()
                await store._RESOURCE_BUSY.fetch(
                    conn, seq=resource_seq, **{"from": window[0], "to": window[1]}
                )
                sql_t.append(time.perf_counter() - t0)
        finally:
            await conn.close()
    return slots_t, next_t, sql_t, found_day
