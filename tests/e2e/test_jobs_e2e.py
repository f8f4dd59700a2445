"""The job service as a real `booking jobs` process next to a real worker and scheduler: after real
deliveries, `/jobs/metrics` counts exactly the sends PostgreSQL recorded in the same window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from redis.asyncio.client import PubSub

from server.web.keys import DB
from tests.conftest import Client, Registrar, auth
from tests.e2e.test_reminders_e2e import (  # noqa: F401  (fixtures)
    Proc,
    book,
    events,
    processes,
    ready,
    reminders_seen,
    start_scheduler,
    start_worker,
)
from tests.processes import free_ports
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def test_jobs_metrics_match_real_deliveries(
    client: Client,
    register: Registrar,
    admin: dict[str, Any],
    processes: Callable[..., Proc],  # noqa: F811
    events: PubSub,  # noqa: F811
) -> None:
    window_start = datetime.now(UTC)
    (port,) = free_ports(1)
    jobs = processes("jobs", ["jobs", "--host", "127.0.0.1", "--port", str(port)])
    worker, scheduler = start_worker(processes), start_scheduler(processes)
    await ready(jobs, "jobs process")
    await ready(worker, "reminder worker ready")
    await ready(scheduler, "reminder scheduler ready")
    base = f"http://127.0.0.1:{port}"

    async with aiohttp.ClientSession(headers=auth(admin)) as http:

        async def metrics() -> dict[str, Any]:
            async with http.get(f"{base}/jobs/metrics") as resp:
                assert resp.status == 200, await resp.text()
                data: dict[str, Any] = await resp.json()
                return data

        async def listening() -> bool:
            assert jobs.popen.poll() is None, jobs.text()
            try:
                async with http.get(f"{base}/jobs/health") as resp:
                    return resp.status in (200, 503)
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(listening, within=10, what="the job service to listen")
        async with http.get(f"{base}/jobs/health") as resp:
            assert resp.status == 200 and (await resp.json())["checks"] == {"database": "ok", "redis": "ok"}
        async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{base}/jobs/metrics") as resp:
            assert resp.status == 401

        user = await register()
        booked = [await book(client, user, seconds=2.5 + i * 0.5) for i in range(3)]
        seen = await reminders_seen(events, user, until=time.monotonic() + 10, expect=3, settle=0.5)
        assert sorted(e["event"]["data"]["bookingId"] for e, _ in seen) == sorted(b["id"] for b in booked)

        async def sent_in_window() -> int:
            async with client.app[DB].connect() as conn:
                count = await conn.fetchval(
                    "SELECT count(*) FROM reminders WHERE sent_at >= $1", window_start
                )
                return int(count)

        # The worker also sends any other test's overdue reminder the reconciler finds in the shared
        # session database; PostgreSQL's record of sends in this window is the ground truth either way.
        async def settled() -> dict[str, Any] | None:
            data = await metrics()
            sent = await sent_in_window()
            return data if data["counters"]["sent"] == sent and data["inFlight"] == 0 else None

        data = await wait_for(settled, within=5, what="/jobs/metrics to agree with PostgreSQL")
        counters = data["counters"]
        assert counters["sent"] >= len(booked)
        assert counters["failed"] == 0 and not data["recentFailures"]
        lateness = data["lateness"]
        assert lateness["samples"] == counters["sent"]
        # (no bound on max: an overdue reminder left by an earlier test is late by design)
        assert 0 <= lateness["p50"] <= lateness["p99"] <= lateness["max"]
        print(f"jobs service lateness p50={lateness['p50']:.3f}s p99={lateness['p99']:.3f}s")  # noqa: T201

        async with http.get(f"{base}/jobs/queue/stats") as resp:
            stats = await resp.json()
        assert stats["pending"]["count"] == 0
        assert any(c["name"] for c in stats["consumers"])  # the live worker's consumer

    assert await asyncio.to_thread(jobs.stop) < 6.0, jobs.text()
