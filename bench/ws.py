"""2. WebSocket latency: sockets on process B, mutations via REST on process A, REST response → frame on B."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from bench.common import BenchUser, Progress, pct


@dataclass
class WsResult:
    sockets: int
    mutations: int
    expected: int
    latencies: list[float]
    early: int

    @property
    def lost(self) -> int:
        return self.expected - len(self.latencies)


async def ws_latency(
    rest_url: str, ws_base: str, users: list[BenchUser], *, sockets: int, mutations: int, concurrency: int = 4
) -> WsResult:
    arrivals: dict[str, list[float]] = defaultdict(list)
    sent: dict[str, float] = {}
    per_user: dict[uuid.UUID, int] = defaultdict(int)
    readers: list[asyncio.Task[None]] = []
    open_ws: list[aiohttp.ClientWebSocketResponse] = []
    ws_url = ws_base.replace("http://", "ws://").replace("https://", "wss://") + "/ws/"

    async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                now = time.perf_counter()
                frame = json.loads(msg.data)
                if frame.get("event") == "booking.created":
                    arrivals[frame["data"]["title"]].append(now)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gate = asyncio.Semaphore(100)
        async with Progress("open sockets", sockets) as progress:

            async def connect(i: int) -> None:
                user = users[i % len(users)]
                async with gate:
                    ws = await http.ws_connect(f"{ws_url}?token={user.token}", heartbeat=None)
                    await ws.send_json({"event": "ping", "id": "p"})
                    msg = await ws.receive(timeout=15)
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise RuntimeError(f"socket refused: {msg.type} {ws.close_code}")
                open_ws.append(ws)
                per_user[user.id] += 1
                readers.append(asyncio.create_task(read(ws)))
                progress.done += 1

            await asyncio.gather(*(connect(i) for i in range(sockets)))
        await asyncio.sleep(0.5)
        base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(mutations):
            queue.put_nowait(i)
        async with Progress("REST mutations on A", mutations) as progress:

            async def mutate() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    user = users[i % len(users)]
                    start = base + timedelta(hours=i)
                    title = f"ws-{i}"
                    body = {
                        "title": title,
                        "startTime": start.isoformat(),
                        "endTime": (start + timedelta(minutes=30)).isoformat(),
                    }
                    headers = {"Authorization": f"Bearer {user.token}"}
                    async with http.post(f"{rest_url}/api/booking", json=body, headers=headers) as resp:
                        await resp.read()
                        sent[title] = time.perf_counter()
                        if resp.status != 201:
                            progress.errors += 1
                            continue
                    progress.done += 1
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(mutate() for _ in range(concurrency)))
        await asyncio.sleep(2.0)
        latencies: list[float] = []
        early = 0
        expected = 0
        for i in range(mutations):
            title = f"ws-{i}"
            if title not in sent:
                continue
            expected += per_user[users[i % len(users)].id]
            for t in arrivals.get(title, []):
                delta = t - sent[title]
                if delta < 0:
                    early += 1
                latencies.append(max(0.0, delta))
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in open_ws), return_exceptions=True)
    return WsResult(len(open_ws), len(sent), expected, latencies, early)


def summary(r: WsResult) -> tuple[float, float]:
    return pct(r.latencies, 0.5), pct(r.latencies, 0.99)
