"""3. Reminder lateness: N reminders due within one UTC minute, through real worker + scheduler processes."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from redis.asyncio import Redis

from bench.common import BenchUser, Progress, pct


@dataclass
class ReminderResult:
    count: int
    lateness: list[float]
    lost: int
    duplicated: int
    notifications: int

    def p(self, q: float) -> float:
        return pct(self.lateness, q)


def _window(now: datetime, lead: float, spread: float) -> datetime:
    """The first start >= now + lead such that [start, start + spread] lies inside one UTC minute."""
    start = now + timedelta(seconds=lead)
    if start.second + start.microsecond / 1e6 + spread >= 59.5:
        start = start.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=0.2)
    return start


async def reminder_lateness(
    urls: list[str],
    users: list[BenchUser],
    *,
    redis_url: str,
    prefix: str,
    database_url: str,
    count: int,
    spread: float,
) -> ReminderResult:
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{prefix}events")
    seen: dict[str, list[float]] = {}
    due: dict[str, float] = {}
    lead = 5.0 + count / 40  # creating them all through the API (~100/s observed with the jobs running)
    t0 = _window(datetime.now(UTC), lead, spread)
    per_user = -(-count // len(users))
    gap = spread / per_user if per_user > 1 else spread  # one user's bookings never overlap
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            gate = asyncio.Semaphore(32)
            async with Progress("create reminders", count) as progress:

                async def create(i: int) -> None:
                    user = users[i % len(users)]
                    start = t0 + timedelta(seconds=spread * i / count)
                    body = {
                        "title": f"rem-{i}",
                        "startTime": start.isoformat(),
                        "endTime": (start + timedelta(seconds=max(0.001, gap / 2))).isoformat(),
                        "reminderMinutesBefore": 0,
                    }
                    headers = {"Authorization": f"Bearer {user.token}"}
                    async with (
                        gate,
                        http.post(f"{urls[i % len(urls)]}/api/booking", json=body, headers=headers) as resp,
                    ):
                        data = await resp.json()
                        if resp.status != 201:
                            raise RuntimeError(f"create failed: {resp.status} {data}")
                    due[data["id"]] = start.timestamp()
                    progress.done += 1

                await asyncio.gather(*(create(i) for i in range(count)))
            if datetime.now(UTC) >= t0:
                raise RuntimeError("creating the reminders took longer than the lead time; lower --reminders")
            deadline = time.monotonic() + (t0 - datetime.now(UTC)).total_seconds() + spread + 30
            settle_until: float | None = None
            async with Progress("reminders received", count) as progress:
                while time.monotonic() < (settle_until or deadline):
                    message = await pubsub.get_message(timeout=0.05)
                    if message is None:
                        continue
                    arrived = time.time()
                    published = json.loads(message["data"])
                    for envelope in published.get("batch", [published]):  # one event, or several
                        event = envelope["event"]
                        if event["event"] == "booking.reminder":
                            seen.setdefault(event["data"]["bookingId"], []).append(arrived)
                    progress.done = len(seen)
                    if len(seen) >= count and settle_until is None:
                        settle_until = time.monotonic() + 2.0  # a duplicate would still be caught
        conn = await asyncpg.connect(database_url)
        try:
            notifications = await conn.fetchval("SELECT count(*) FROM notifications")
        finally:
            await conn.close()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
    lateness = [times[0] - due[b] for b, times in seen.items() if b in due]
    duplicated = sum(len(times) - 1 for times in seen.values())
    return ReminderResult(count, lateness, count - len(set(seen) & set(due)), duplicated, int(notifications))
