"""5. Memory per idle WebSocket and per idle actor, and the most sockets one web process holds.

One dedicated `booking serve` process (so the other scenarios' traffic does not blur its RSS), read
through /proc (VmRSS, Linux):
  1. `sockets` sockets of ONE user: the cost of a socket alone (the user's actor is shared);
  2. `actors` users with one socket each: socket + what an idle user costs beyond it, so per actor =
     (2) - (1). Since the event hub (actors/hub.py) a socket keeps no actor alive: an idle user is a
     hub room and cached rows, and this figure is what an idle user with an open socket costs;
  3. capacity: more sockets, spread over users, until `capacity` are open or one is refused; every
     socket answers a ping before it counts, and all are held open at once.
RSS only grows when the allocator needs pages, so the figures are an upper bound on what Python holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import BenchUser, Progress, Stack
from tests.processes import start_web, stop

SETTLE_SECONDS = 2.0
CONNECT_GATE = 200  # handshakes in flight at once


@dataclass
class MemoryResult:
    sockets: int
    actors: int
    rss_before_kib: float
    per_socket_kib: float
    per_actor_kib: float
    held: int  # sockets open at once at the end of the capacity run
    capacity_target: int
    rss_at_capacity_kib: float
    refused: str  # why the capacity run stopped early ("" when it reached its target)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS (Linux only)")


class Sockets:
    """Idle authenticated sockets, each with a reader (as a real client: heartbeat pings get answered)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.url = base_url.replace("http://", "ws://") + "/ws/"
        self.open: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.refused = ""

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    async def add(self, users: list[BenchUser], label: str) -> int:
        """Open one socket per entry of `users`; stop at the first refusal. The number opened."""
        gate = asyncio.Semaphore(CONNECT_GATE)
        opened = 0
        async with Progress(label, len(users)) as progress:

            async def one(user: BenchUser) -> None:
                nonlocal opened
                if self.refused:
                    return
                async with gate:
                    try:
                        ws = await self.http.ws_connect(f"{self.url}?token={user.token}", heartbeat=None)
                        await ws.send_json({"event": "ping", "id": "p"})
                        msg = await ws.receive(timeout=30)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        self.refused = self.refused or f"{type(exc).__name__}: {exc}"[:120]
                        return
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        self.refused = self.refused or f"{msg.type.name} close {ws.close_code}"
                        return
                    self.open.append(ws)
                    self.readers.add(asyncio.create_task(self._drain(ws)))
                    opened += 1
                    progress.done += 1

            await asyncio.gather(*(one(u) for u in users))
        return opened

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.open), return_exceptions=True)
        for task in self.readers:
            task.cancel()


async def memory(stack: Stack, *, sockets: int, actors: int, capacity: int) -> MemoryResult:
    users = await stack.seed_users(1 + max(actors, capacity // 10), "mem")
    (web,) = await asyncio.to_thread(start_web, 1, stack.env(), timeout=60.0)
    pid = web.process.pid
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            pool = Sockets(http, web.base_url)
            try:
                # Warm-up: the first socket, actor and queries (lazy imports, pools) are not per socket.
                warm = Sockets(http, web.base_url)
                await warm.add([users[0]] * 20, "warm-up")
                await warm.close()
                await asyncio.sleep(SETTLE_SECONDS)
                before = rss_kib(pid)

                await pool.add([users[0]] * sockets, "one user")
                await asyncio.sleep(SETTLE_SECONDS)
                per_socket = (rss_kib(pid) - before) / sockets

                mark = rss_kib(pid)
                await pool.add(users[1 : actors + 1], "one socket per user")
                await asyncio.sleep(SETTLE_SECONDS)
                per_pair = (rss_kib(pid) - mark) / actors

                more = max(0, capacity - len(pool.open))
                spread = [users[i % len(users)] for i in range(more)]
                await pool.add(spread, "capacity")
                await asyncio.sleep(SETTLE_SECONDS)
                held = sum(1 for ws in pool.open if not ws.closed)
                at_capacity = rss_kib(pid)
            finally:
                await pool.close()
    finally:
        await asyncio.to_thread(stop, [web])
    return MemoryResult(
        sockets=sockets,
        actors=actors,
        rss_before_kib=before,
        per_socket_kib=per_socket,
        per_actor_kib=per_pair - per_socket,
        held=held,
        capacity_target=capacity,
        rss_at_capacity_kib=at_capacity,
        refused=pool.refused,
    )
