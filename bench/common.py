"""Shared pieces: percentiles, the live progress line, and the stack the tool starts and tears down."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import psutil

from actors.services.security import TokenCodec
from tests.processes import BOOKING, WebProcess, start_web, stop
from tests.support import create_database, drop_database, with_database

ROOT = Path(__file__).resolve().parent.parent
ACCESS_SECRET = "bench-access-secret-" + "0123456789abcdef" * 2
REFRESH_SECRET = "bench-refresh-secret-" + "0123456789abcdef" * 2
UNLIMITED = str(10**9)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


class Progress:
    """A live counter on stderr: `label: done/total  rate/s`, redrawn a few times a second."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.errors = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def _line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self._started)
        total = f"/{self.total}" if self.total else ""
        errors = f"  errors {self.errors}" if self.errors else ""
        return (
            f"\r  {self.label}: {self.done}{total}  {self.done / elapsed:,.0f}/s  {elapsed:.1f}s{errors}   "
        )

    async def _draw(self) -> None:
        while True:
            sys.stderr.write(self._line())
            sys.stderr.flush()
            await asyncio.sleep(0.25)

    async def __aenter__(self) -> Progress:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._draw())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        sys.stderr.write(self._line() + "\n")
        sys.stderr.flush()


SERVER_NAMES = ("postgres", "redis-server")


class CpuMeter:
    """CPU seconds spent by given processes (the web processes) and by the machine's PostgreSQL and
    Redis server processes between `start()` and `stop()`: CPU per operation is steadier than a rate on
    a shared machine, and shows where the work went."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self._start: tuple[float, float] | None = None

    @staticmethod
    def _cpu(procs: Sequence[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def _servers(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] in SERVER_NAMES]

    def _now(self) -> tuple[float, float]:
        return self._cpu([psutil.Process(pid) for pid in self.pids]), self._cpu(self._servers())

    def start(self) -> None:
        self._start = self._now()

    def stop(self, operations: int) -> tuple[float, float]:
        """(own, servers) CPU milliseconds per operation."""
        if self._start is None or operations <= 0:
            return math.nan, math.nan
        own, servers = self._now()
        return (
            (own - self._start[0]) * 1000 / operations,
            (servers - self._start[1]) * 1000 / operations,
        )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class BenchUser:
    id: uuid.UUID
    seq: int
    token: str


@dataclass
class Stack:
    """A throwaway database, a Redis key prefix and the processes under test (or a given URL)."""

    admin_url: str
    redis_url: str
    pool_size: int
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}:")
    db_name: str = field(default_factory=lambda: f"booking_bench_{uuid.uuid4().hex[:10]}")
    external: list[str] = field(default_factory=list)
    webs: list[WebProcess] = field(default_factory=list)
    jobs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)
    codec: TokenCodec = field(
        default_factory=lambda: TokenCodec(
            access_secret=ACCESS_SECRET, refresh_secret=REFRESH_SECRET, access_ttl=86400, refresh_ttl=86400
        )
    )

    @property
    def database_url(self) -> str:
        return with_database(self.admin_url, self.db_name)

    @property
    def urls(self) -> list[str]:
        return self.external or [w.base_url for w in self.webs]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "NODE_ENV": "test",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "JWT_SECRET_KEY": ACCESS_SECRET,
            "REFRESH_JWT_SECRET_KEY": REFRESH_SECRET,
            "AUTH_RATE_LIMIT_PER_IP": UNLIMITED,
            "AUTH_RATE_LIMIT_PER_EMAIL": UNLIMITED,
            "API_RATE_LIMIT_PER_USER": UNLIMITED,
            "DB_POOL_SIZE": str(self.pool_size),
            "LOG_LEVEL": "WARNING",
            **extra,
        }

    async def create_database(self) -> None:
        from storage import migrate

        await create_database(self.admin_url, self.db_name)
        await asyncio.to_thread(migrate.upgrade, self.database_url)

    async def drop_database(self) -> None:
        await drop_database(self.admin_url, self.db_name)

    async def drop_keys(self) -> int:
        """Delete this run's Redis keys (schedules, stream, claims, limits): a shared Redis keeps no
        leftovers to slow the next run's SCANs."""
        from redis.asyncio import Redis

        redis = Redis.from_url(self.redis_url)
        dropped = 0
        try:
            batch: list[bytes] = []
            async for key in redis.scan_iter(match=f"*{self.prefix}*", count=1000):
                batch.append(key)
                if len(batch) == 500:
                    dropped += await redis.unlink(*batch)
                    batch.clear()
            if batch:
                dropped += await redis.unlink(*batch)
        finally:
            await redis.aclose()
        return dropped

    async def start_web(self, n: int = 2) -> None:
        self.webs = await asyncio.to_thread(start_web, n, self.env(), timeout=60.0)

    async def start_jobs(self) -> None:
        """`booking worker` + `booking scheduler` on this stack's database and prefix, once ready."""
        env = {**os.environ, **self.env(DB_POOL_SIZE="4", LOG_LEVEL="INFO")}
        specs = [
            (["worker", "--grace", "3"], "reminder worker ready"),
            (
                ["scheduler", "--update-interval", "1", "--reconcile-interval", "1"],
                "reminder scheduler ready",
            ),
        ]
        for args, marker in specs:
            log = tempfile.NamedTemporaryFile(prefix=f"bench-{args[0]}-", suffix=".log", delete=False)  # noqa: SIM115
            proc = subprocess.Popen(  # noqa: S603, ASYNC220 (our own binary; returns at once)
                [str(BOOKING), *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            self.jobs.append((proc, log))
            deadline = time.monotonic() + 30
            path = Path(log.name)
            while marker not in (text := await asyncio.to_thread(path.read_text, errors="replace")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} not ready:\n{text}")
                await asyncio.sleep(0.1)

    async def stop_jobs(self) -> None:
        for proc, _ in self.jobs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.jobs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
            log.close()
            os.unlink(log.name)
        self.jobs.clear()

    async def stop(self) -> None:
        await self.stop_jobs()
        if self.webs:
            await asyncio.to_thread(stop, self.webs)
            self.webs = []

    async def seed_users(self, n: int, label: str) -> list[BenchUser]:
        """`n` users inserted straight into the database (no argon2), each with a minted access token."""
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "INSERT INTO users (email, name, password_hash) "
                "SELECT $1 || g || '-' || $2 || '@bench.invalid', 'Bench', 'not-a-hash' "
                "FROM generate_series(1, $3::int) g RETURNING id, seq",
                label,
                uuid.uuid4().hex[:8],
                n,
            )
        finally:
            await conn.close()
        return [BenchUser(r["id"], r["seq"], self.codec.issue("access", r["id"])[0]) for r in rows]


async def register_users(urls: list[str], n: int, http: Any) -> list[BenchUser]:
    """Against a stack we did not start: register through the API (argon2, subject to its rate limits)."""
    users: list[BenchUser] = []
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        body = {"email": f"bench-{uuid.uuid4().hex}@example.com", "password": "bench password", "name": "B"}
        async with gate, http.post(f"{urls[i % len(urls)]}/api/auth/register", json=body) as resp:
            if resp.status != 201:
                raise SystemExit(f"register failed: {resp.status} {await resp.text()}")
            data = await resp.json()
        users.append(BenchUser(uuid.UUID(data["user"]["id"]), 0, data["accessToken"]))

    await asyncio.gather(*(one(i) for i in range(n)))
    return users
