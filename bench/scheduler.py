"""Scheduler cost against the size of the schedule: N pending reminders due in the future (inserted by
SQL), a real `booking scheduler` process for a few seconds at each N, its CPU per second and
PostgreSQL's. The tick reads only the rows due within its lookahead, so the cost should stay flat."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from bench.common import ROOT, SERVER_NAMES, Stack, say
from tests.processes import BOOKING


@dataclass(frozen=True, slots=True)
class SchedulerCost:
    pending: int
    own_ms_per_s: float  # the scheduler's CPU milliseconds per wall second
    postgres_ms_per_s: float


async def fill(database_url: str, users: list[object], total: int) -> None:
    """Top the pending reminders up to `total`: bookings an hour apart per user, days ahead (beyond any
    lookahead), each with its pending reminder, by generate_series (a few seconds per million)."""
    conn = await asyncpg.connect(database_url)
    try:
        have = int(await conn.fetchval("SELECT count(*) FROM reminders WHERE state = 'pending'"))
        per_user = -(-(total - have) // len(users))
        for n, user in enumerate(users):
            if have >= total:
                break
            count = min(per_user, total - have)
            await conn.execute(
                """
                WITH b AS (
                    INSERT INTO bookings (user_id, user_seq, title, start_time, end_time,
                                          reminder_minutes_before)
                    SELECT $1, 0, 'Bench',
                           now() + interval '2 days' + ($3 + g) * interval '1 hour',
                           now() + interval '2 days' + ($3 + g) * interval '1 hour' + interval '30 minutes',
                           10
                    FROM generate_series(1, $2::int) g
                    RETURNING id, user_id, start_time
                )
                INSERT INTO reminders (booking_id, user_id, start_time, due_at)
                SELECT id, user_id, start_time, start_time - interval '10 minutes' FROM b
                """,
                user.id,  # type: ignore[attr-defined]
                count,
                n * 10_000_000 + have,
            )
            have += count
        await conn.execute("VACUUM ANALYZE reminders")
    finally:
        await conn.close()


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds per process (a backend that ends in between is left out of the delta)."""
    seen: dict[int, float] = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        seen[proc.pid] = t.user + t.system
    return seen


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


async def measure(stack: Stack, seconds: float) -> tuple[float, float]:
    """Start a scheduler, let it settle, then its CPU and PostgreSQL's over `seconds` (ms per second)."""
    env = {**os.environ, **stack.env(DB_POOL_SIZE="4", LOG_LEVEL="INFO")}
    log = tempfile.NamedTemporaryFile(prefix="bench-scheduler-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(  # noqa: S603, ASYNC220 (our own binary; returns at once)
        [str(BOOKING), "scheduler", "--update-interval", "1"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        path = Path(log.name)
        while "reminder scheduler ready" not in (text := await asyncio.to_thread(path.read_text)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scheduler not ready:\n{text}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # past start-up
        own = _tree(proc.pid)  # the entry point may be a wrapper of the Python process
        servers = [p for p in psutil.process_iter(["name"]) if p.info["name"] in SERVER_NAMES[:1]]
        started, own0, pg0 = time.monotonic(), _cpu(own), _cpu(servers)
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        return (
            _delta(own0, _cpu(own)) * 1000 / elapsed,
            _delta(pg0, _cpu(servers)) * 1000 / elapsed,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


async def scheduler_cost(stack: Stack, sizes: list[int], seconds: float) -> list[SchedulerCost]:
    users = await stack.seed_users(4, "sched")
    results = []
    for n in sizes:
        say(f"bench: scheduler: {n} pending reminders")
        await fill(stack.database_url, users, n)
        own, pg = await measure(stack, seconds)
        results.append(SchedulerCost(n, own, pg))
        say(f"bench: scheduler at {n}: {own:.1f} ms/s, PostgreSQL {pg:.1f} ms/s")
    return results
