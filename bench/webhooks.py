"""6. Webhooks: commit → delivery latency under a paced load of booking changes, and deliveries per
second in a burst, through two web processes, a real worker and scheduler, to a receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import BenchUser, Progress, pct


@dataclass
class Arrivals:
    first: dict[str, float] = field(default_factory=dict)  # webhook-id → arrival (epoch seconds)
    committed: dict[str, float] = field(default_factory=dict)  # webhook-id → the booking's updatedAt
    duplicated: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = await request.read()
        message_id = request.headers["webhook-id"]
        if message_id in self.first:
            self.duplicated += 1
        else:
            self.first[message_id] = arrived
            booking = json.loads(body)["data"]["booking"]
            self.committed[message_id] = datetime.fromisoformat(booking["updatedAt"]).timestamp()
        return web.Response(status=204)


@dataclass
class WebhookResult:
    rate: float  # booking changes per second actually offered
    sent: int
    latencies: list[float]
    lost: int
    duplicated: int
    burst: int
    burst_per_second: float
    burst_lost: int
    refused: dict[int, int]

    def p(self, q: float) -> float:
        return pct(self.latencies, q)


async def _endpoints(http: aiohttp.ClientSession, url: str, users: list[BenchUser], target: str) -> None:
    for user in users:
        body = {"url": target, "events": ["booking.created", "booking.updated"]}
        headers = {"Authorization": f"Bearer {user.token}"}
        async with http.post(f"{url}/api/webhooks", json=body, headers=headers) as resp:
            if resp.status != 201:
                raise RuntimeError(f"webhook create failed: {resp.status} {await resp.text()}")


async def _wait(arrivals: Arrivals, expected: int, label: str, within: float) -> None:
    deadline = time.monotonic() + within
    async with Progress(label, expected) as progress:
        while len(arrivals.first) < expected and time.monotonic() < deadline:
            progress.done = len(arrivals.first)
            await asyncio.sleep(0.05)
        progress.done = len(arrivals.first)
    await asyncio.sleep(2.0)  # a duplicate would still be counted


async def webhook_delivery(
    urls: list[str], users: list[BenchUser], *, rate: float, duration: float, burst: int
) -> WebhookResult:
    arrivals = Arrivals()
    app = web.Application()
    app.router.add_post("/hook", arrivals.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    slot = [0]
    refused: dict[int, int] = {}  # status → creates that did not succeed (an overloaded machine: 503)

    def body() -> dict[str, Any]:
        slot[0] += 1  # every booking its own hour: no overlaps whatever the user
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2 * slot[0])
        return {
            "title": "hooked",
            "startTime": start.isoformat(),
            "endTime": (start + timedelta(hours=1)).isoformat(),
            "reminderMinutesBefore": None,
        }

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await _endpoints(http, urls[0], users, target)
            failures = 0

            async def change(i: int) -> None:
                nonlocal failures
                user = users[i % len(users)]
                headers = {"Authorization": f"Bearer {user.token}"}
                async with http.post(f"{urls[i % len(urls)]}/api/booking", json=body(), headers=headers) as r:
                    if r.status != 201:
                        failures += 1
                        refused[r.status] = refused.get(r.status, 0) + 1

            # Paced: an open loop at `rate` changes per second (each a create, one message each).
            count = max(1, int(rate * duration))
            tasks: list[asyncio.Task[None]] = []
            started = time.monotonic()
            async with Progress(f"booking changes at {rate:.0f}/s", count) as progress:
                for i in range(count):
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(change(i)))
                    progress.done = i + 1
                await asyncio.gather(*tasks)
            offered = count / max(1e-9, time.monotonic() - started)
            sent = count - failures
            await _wait(arrivals, sent, "webhooks received", 30 + duration)
            latencies = [arrivals.first[m] - arrivals.committed[m] for m in arrivals.first]
            paced_seen = len(arrivals.first)

            # Burst: as fast as 32 concurrent clients create; the receiver's rate from first to last.
            gate = asyncio.Semaphore(32)
            failures = 0

            async def limited(i: int) -> None:
                async with gate:
                    await change(i)

            before = set(arrivals.first)
            await asyncio.gather(*(limited(count + i) for i in range(burst)))
            burst_sent = burst - failures
            await _wait(arrivals, paced_seen + burst_sent, "burst received", 60)
            times = sorted(t for m, t in arrivals.first.items() if m not in before)
            span = times[-1] - times[0] if len(times) > 1 else float("nan")
    finally:
        await runner.cleanup()
    return WebhookResult(
        rate=offered,
        sent=sent,
        latencies=latencies,
        lost=sent - paced_seen,
        duplicated=arrivals.duplicated,
        burst=burst_sent,
        burst_per_second=(len(times) - 1) / span if span == span and span > 0 else float("nan"),
        burst_lost=burst_sent - len(times),
        refused=refused,
    )
