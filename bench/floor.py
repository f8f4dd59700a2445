"""The framework floor: aiohttp (uvloop) and asyncpg alone, the create statement, nothing else.

    .venv/bin/python -m bench.floor PORT DATABASE_URL POOL_SIZE     # one process of it

`python -m bench --only create` runs two of these beside the service's two web processes and drives
them with the same client and body (bench/create.py's `http_rate`). Each create parses the JSON body,
runs the very statement the service runs (booking + audit + reminder rows, storage/bookings.py) on a
pool of the same size and answers 201 with the booking's id. No authentication (the bearer token is
`<user id>:<user seq>`), no validation, no actor, no event, no metrics: what is left of a create's web
CPU when every part of the service above the framework and the driver is taken away, so the service's
figure reads as floor + the service's own share (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import uvloop
from aiohttp import web

from bench import create
from bench.common import ROOT, BenchUser
from storage.bookings import CREATE_BOOKING
from tests.processes import free_ports, wait_healthy

POOL = web.AppKey("pool", asyncpg.Pool)


async def _create(request: web.Request) -> web.Response:
    user_id, _, seq = request.headers["Authorization"].removeprefix("Bearer ").partition(":")
    owner = uuid.UUID(user_id)
    data = orjson.loads(await request.read())
    start, end = datetime.fromisoformat(data["startTime"]), datetime.fromisoformat(data["endTime"])
    args = CREATE_BOOKING.args(
        {
            "actor_id": owner,
            "reminder_due_at": start - create.REMINDER,
            "id": uuid.uuid4(),
            "user_id": owner,
            "user_seq": int(seq),
            "title": data["title"],
            "description": None,
            "location": None,
            "notes": None,
            "start_time": start,
            "end_time": end,
            "reminder_minutes_before": 10,
            "attendees": "[]",  # jsonb as text: this pool has no JSON codec
        }
    )
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(CREATE_BOOKING.sql, *args)
    if row is None:
        return web.Response(status=409)
    return web.Response(
        body=orjson.dumps({"id": str(row["id"])}), status=201, content_type="application/json"
    )


def app(database_url: str, pool_size: int) -> web.Application:
    async def pool(app: web.Application) -> Any:
        app[POOL] = await asyncpg.create_pool(
            database_url, min_size=0, max_size=pool_size, connection_class=create.NoReset
        )
        yield
        await app[POOL].close()

    application = web.Application()
    application.cleanup_ctx.append(pool)
    application.router.add_post("/api/booking", _create)
    application.router.add_get("/health", lambda _: web.Response(text="ok"))
    return application


def start(n: int, database_url: str, pool_size: int) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """`n` floor processes, each on its own port, once they answer."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for port in free_ports(n):
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "bench.floor", str(port), database_url, str(pool_size)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append((f"http://127.0.0.1:{port}", process))
        deadline = time.monotonic() + 30
        for url, process in started:
            wait_healthy(url, deadline, process)
    except BaseException:
        stop(started)
        raise
    return started


def stop(started: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, process in started:
        process.terminate()
    for _, process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


async def rate(
    database_url: str,
    users: list[BenchUser],
    *,
    processes: int,
    pool: int,
    concurrency: int,
    duration: float,
    warmup: float,
) -> create.Rate:
    """The create load of `http_rate` on `processes` floor processes."""
    started = await asyncio.to_thread(start, processes, database_url, pool)
    try:
        floor_users = [BenchUser(u.id, u.seq, f"{u.id}:{u.seq}") for u in users]
        return await create.http_rate(
            [url for url, _ in started],
            floor_users,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            web_pids=[process.pid for _, process in started],
        )
    finally:
        await asyncio.to_thread(stop, started)


if __name__ == "__main__":
    port, url, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    listener = socket.create_server(("127.0.0.1", port))
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app(url, size), sock=listener, access_log=None, print=None)
