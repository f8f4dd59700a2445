"""9. Recurring series: creating a 52-occurrence weekly series (one request, one transaction), beside the
same 52 bookings created one request at a time in the same run."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import aiohttp

from bench.common import BenchUser

OCCURRENCES = 52
RULE = f"FREQ=WEEKLY;COUNT={OCCURRENCES}"


def _first(n: int) -> datetime:
    """Sample n's first occurrence: its own hour of a day a week out, so no two samples meet."""
    base = (datetime.now(UTC) + timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0)
    return base + timedelta(hours=n % 24, days=n // 24)


async def latency(url: str, users: list[BenchUser], *, references: int) -> tuple[list[float], list[float]]:
    """(each series create's latency, each reference's time for the same 52 bookings one by one)."""
    series_t: list[float] = []
    single_t: list[float] = []
    async with aiohttp.ClientSession() as http:
        for n, user in enumerate(users):
            headers = {"Authorization": f"Bearer {user.token}"}
            start = _first(n)
            reference = n < references
            if reference:  # the same 52 slots, booked singly, then removed so the series can take them
                t0 = time.perf_counter()
                ids = []
                for week in range(OCCURRENCES):
                    s = start + timedelta(weeks=week)
                    body = {
                        "title": "Bench",
                        "startTime": s.isoformat(),
                        "endTime": (s + timedelta(minutes=30)).isoformat(),
                    }
                    async with http.post(f"{url}/api/booking", json=body, headers=headers) as resp:
                        assert resp.status == 201, await resp.text()  # noqa: S101
                        ids.append((await resp.json())["id"])
                single_t.append(time.perf_counter() - t0)
                for booking_id in ids:
                    async with http.delete(f"{url}/api/booking/{booking_id}", headers=headers) as resp:
                        assert resp.status == 204, await resp.text()  # noqa: S101
            body = {
                "title": "Bench series",
                "startTime": start.isoformat(),
                "endTime": (start + timedelta(minutes=30)).isoformat(),
                "recurrence": {"rrule": RULE, "timeZone": "Europe/Berlin"},
            }
            t0 = time.perf_counter()
            async with http.post(f"{url}/api/booking", json=body, headers=headers) as resp:
                text = await resp.read()
                assert resp.status == 201, text  # noqa: S101
            series_t.append(time.perf_counter() - t0)
    return series_t, single_t
