"""Memory per idle WebSocket connection (and per idle actor) of one real `booking serve` process.

    .venv/bin/python bench/ws_memory.py --database-url postgresql://postgres@127.0.0.1/postgres \
        --redis-url redis://127.0.0.1:6379/0 --sockets 1000 --actors 200

It creates a throwaway database (migrated to head), starts one web process on a free port, and reads the
process's resident set size (VmRSS, Linux) before and after opening idle authenticated sockets:
  1. `--sockets` sockets of ONE user: the cost of a socket alone (the user's actor is shared);
  2. `--actors` users with one socket each: socket + that user's actor, so per actor = (2) - (1).
Every socket answers a ping before it counts, so it is authenticated and subscribed. RSS only grows
when the allocator needs pages, so the figures are an upper bound on what Python objects hold; take the
median of a few runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
BOOKING = Path(sys.executable).parent / "booking"
SETTLE_SECONDS = 2.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS (Linux only)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def wait_healthy(http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(f"the web process exited with {process.returncode}")
        try:
            async with http.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the web process did not become healthy within 30 s")


async def register(http: aiohttp.ClientSession, url: str) -> str:
    body = {"email": f"bench-{uuid.uuid4().hex}@example.com", "password": "bench password", "name": "B"}
    async with http.post(f"{url}/api/auth/register", json=body) as resp:
        if resp.status != 201:
            raise SystemExit(f"register failed: {resp.status} {await resp.text()}")
        data: dict[str, Any] = await resp.json()
        token: str = data["accessToken"]
        return token


readers: set[asyncio.Task[None]] = set()


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def open_idle(
    http: aiohttp.ClientSession, ws_url: str, tokens: list[str], label: str
) -> list[aiohttp.ClientWebSocketResponse]:
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    gate = asyncio.Semaphore(100)

    async def one(token: str) -> None:
        async with gate:
            ws = await http.ws_connect(f"{ws_url}?token={token}", heartbeat=None)
            await ws.send_json({"event": "ping", "id": "p"})
            msg = await ws.receive(timeout=10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise SystemExit(f"socket refused: {msg.type} {ws.close_code}")
            sockets.append(ws)
            # Keep reading, as a real client does: control frames (the server's heartbeat pings) are
            # answered inside receive(), and a socket that never answers is closed by the heartbeat.
            readers.add(asyncio.create_task(_drain(ws)))
            if len(sockets) % 100 == 0 or len(sockets) == len(tokens):
                print(f"  {label}: {len(sockets)}/{len(tokens)} sockets open", flush=True)

    await asyncio.gather(*(one(t) for t in tokens))
    return sockets


async def measure(args: argparse.Namespace, database_url: str) -> list[tuple[str, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/ws/"
    env = {
        **os.environ,
        "NODE_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "REDIS_KEY_PREFIX": f"bench{uuid.uuid4().hex[:8]}:",
        "AUTH_RATE_LIMIT_PER_IP": "1000000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    # A log file, not a pipe: a pipe nobody reads would fill and block the server.
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(BOOKING),
            *("serve", "--host", "127.0.0.1", "--port", str(port)),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            return await _measure(args, process, url, ws_url)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _measure(
    args: argparse.Namespace, process: asyncio.subprocess.Process, url: str, ws_url: str
) -> list[tuple[str, str]]:
    open_sockets: list[aiohttp.ClientWebSocketResponse] = []  # held, or they would be collected and closed
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await wait_healthy(http, url, process)
        token = await register(http, url)
        # Warm-up: first socket, first actor, first queries; lazy imports and pools are not per socket.
        for ws in await open_idle(http, ws_url, [token] * 20, "warm-up"):
            await ws.close()
        await asyncio.sleep(SETTLE_SECONDS)
        before = rss_kib(process.pid)

        open_sockets += await open_idle(http, ws_url, [token] * args.sockets, "one user")
        await asyncio.sleep(SETTLE_SECONDS)
        with_sockets = rss_kib(process.pid)
        per_socket = (with_sockets - before) * 1024 / args.sockets

        rows = [
            ("idle sockets (one user)", f"{args.sockets}"),
            ("RSS before", f"{before / 1024:.1f} MiB"),
            ("RSS with sockets", f"{with_sockets / 1024:.1f} MiB"),
            ("per idle socket", f"{per_socket / 1024:.1f} KiB"),
        ]
        if args.actors:
            tokens = [await register(http, url) for _ in range(args.actors)]
            await asyncio.sleep(SETTLE_SECONDS)
            registered = rss_kib(process.pid)
            open_sockets += await open_idle(http, ws_url, tokens, "one socket per user")
            await asyncio.sleep(SETTLE_SECONDS)
            with_actors = rss_kib(process.pid)
            per_pair = (with_actors - registered) * 1024 / args.actors
            rows += [
                ("users with one socket each", f"{args.actors}"),
                ("per socket + its user's actor", f"{per_pair / 1024:.1f} KiB"),
                ("per idle actor (difference)", f"{(per_pair - per_socket) / 1024:.1f} KiB"),
            ]
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        gauge = next(line for line in text.splitlines() if line.startswith("websocket_connections "))
        rows.append(("server gauge", gauge))
        for ws in open_sockets:
            await ws.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="a server where a throwaway database may be created (default TEST_DATABASE_URL)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--actors", type=int, default=200, help="users with one socket each (0: skip)")
    args = parser.parse_args()

    from storage import migrate

    name = f"booking_bench_{uuid.uuid4().hex[:10]}"
    database_url = asyncio.run(create_database(args.database_url, name))
    try:
        migrate.upgrade(database_url)
        rows = asyncio.run(measure(args, database_url))
    finally:
        asyncio.run(drop_database(args.database_url, name))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
