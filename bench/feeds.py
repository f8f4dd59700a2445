"""9. Calendar feeds: `GET /cal/{token}.ics` of a user with many bookings (a few of them series
occurrences), three ways — after a change (one booking changed before each fetch: a new ETag, rendered
again, the other events' serialized text reused), unchanged (the process's cached body for the same ETag),
and 304 (If-None-Match) — beside `GET /api/booking?limit=100` of the same user, the feed's two reads via
asyncpg, and a render with nothing cached (the first fetch after a restart), in the same run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from actors.domain import ics
from bench.common import BenchUser, Progress
from storage import calendar_feeds as store

SERIES = 4  # weekly series of SERIES_LENGTH occurrences each, among the user's bookings
SERIES_LENGTH = 25
FILL_SQL = """
INSERT INTO bookings (user_id, user_seq, title, description, location, start_time, end_time,
                      reminder_minutes_before)
SELECT $1, $2, 'Booking ' || g, 'Notes for booking ' || g || ', with a comma; and a semicolon',
       'Room ' || g % 7, $3::timestamptz + g * interval '3 hours',
       $3::timestamptz + g * interval '3 hours' + interval '1 hour', NULL
FROM generate_series(0, $4::int - 1) g
"""
SERIES_SQL = """
INSERT INTO booking_series (user_id, rrule, time_zone, dtstart, duration_seconds, title)
VALUES ($1, $2, 'Europe/Berlin', $3, 3600, $4) RETURNING id
"""
OCCURRENCE_SQL = """
INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, series_id, occurrence_start,
                      reminder_minutes_before)
SELECT $1, $2, $3, $4::timestamptz + g * interval '7 days',
       $4::timestamptz + g * interval '7 days' + interval '1 hour', $5,
       $4::timestamptz + g * interval '7 days', NULL
FROM generate_series(0, $6::int - 1) g
"""


@dataclass
class FeedResult:
    bookings: int
    bytes: int
    fresh: list[float]
    cached: list[float]
    not_modified: list[float]
    listing: list[float]
    sql: list[float]
    cold: list[float]  # render_bookings in this process with no serialized event cached


async def load(database_url: str, user: BenchUser, bookings: int) -> None:
    """`bookings` rows of the user from tomorrow on, SERIES * SERIES_LENGTH of them series occurrences
    (weekly at 09:00 UTC+1 in winter, so their DST is in play), the rest single bookings every 3 hours."""
    base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    conn = await asyncpg.connect(database_url, command_timeout=600)
    try:
        singles = max(0, bookings - SERIES * SERIES_LENGTH)
        await conn.execute(FILL_SQL, user.id, user.seq, base, singles)
        after = base + timedelta(hours=3 * singles + 1)
        for n in range(SERIES):
            start = (after + timedelta(hours=1 + n)).replace(minute=30)
            rule = f"FREQ=WEEKLY;INTERVAL=1;COUNT={SERIES_LENGTH}"
            series_id = await conn.fetchval(SERIES_SQL, user.id, rule, start, f"Series {n}")
            await conn.execute(
                OCCURRENCE_SQL, user.id, user.seq, f"Series {n}", start, series_id, SERIES_LENGTH
            )
        await conn.execute("ANALYZE bookings")
    finally:
        await conn.close()


async def latency(url: str, database_url: str, user: BenchUser, *, bookings: int, samples: int) -> FeedResult:
    headers = {"Authorization": f"Bearer {user.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/calendar/feeds", json={"kind": "bookings"}, headers=headers) as resp:
            if resp.status != 201:
                raise RuntimeError(f"feed create failed: {resp.status} {await resp.text()}")
            feed = f"{url}{(await resp.json())['path']}"
        conn = await asyncpg.connect(database_url)
        try:
            some = await conn.fetchval("SELECT id FROM bookings WHERE user_id = $1 LIMIT 1", user.id)

            async def get(target: str, extra: dict[str, str] | None = None) -> tuple[float, int, str]:
                t0 = time.perf_counter()
                async with http.get(target, headers=extra or {}) as r:
                    body = await r.read()
                    if r.status not in (200, 304):
                        raise RuntimeError(f"{target}: {r.status} {body[:200]!r}")
                    return time.perf_counter() - t0, len(body), r.headers.get("ETag", "")

            fresh: list[float] = []
            cached: list[float] = []
            not_modified: list[float] = []
            listing: list[float] = []
            sql: list[float] = []
            size, etag = 0, ""
            async with Progress("calendar feed", 4 * samples) as progress:
                for i in range(samples + 3):
                    # A change (not timed) before each fresh fetch: a new ETag, so the feed is rendered.
                    await conn.execute("UPDATE bookings SET version = version + 1 WHERE id = $1", some)
                    took, size, etag = await get(feed)
                    again, _, _ = await get(feed)
                    unchanged, _, _ = await get(feed, {"If-None-Match": etag})
                    listed, _, _ = await get(f"{url}/api/booking?limit=100", headers)
                    if i >= 3:  # warm-up
                        fresh.append(took)
                        cached.append(again)
                        not_modified.append(unchanged)
                        listing.append(listed)
                        progress.done += 4
                for _ in range(samples):
                    t0 = time.perf_counter()
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        series, rows = await store.bookings_feed_rows(
                            conn, user_id=user.id, since=datetime.now(UTC) - timedelta(days=90)
                        )
                    sql.append(time.perf_counter() - t0)
            cold: list[float] = []
            for _ in range(max(3, samples // 10)):  # the first fetch of a feed after a restart
                ics._components.clear()
                t0 = time.perf_counter()
                ics.render_bookings("bench", series, rows)
                cold.append(time.perf_counter() - t0)
        finally:
            await conn.close()
    return FeedResult(bookings, size, fresh, cached, not_modified, listing, sql, cold)
