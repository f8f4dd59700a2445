"""2. WebSocket latency: sockets on process B, mutations via REST on process A.

The figure is commit → frame: from the event's `timestamp` (stamped by process A right after the commit,
when it emits) to the frame's arrival on a socket of process B, on the one clock of this machine. The
REST reply → frame gap is reported beside it (often negative: the frame beats the HTTP reply).
"""

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
    expected: int  # frames due: each mutation x the sockets of its user
    latencies: list[float]  # commit → frame on B, one per frame that arrived
    reply_gaps: list[float]  # REST reply on A → frame on B (negative: the frame came first)

    @property
    def lost(self) -> int:
        return self.expected - len(self.latencies)

    @property
    def early(self) -> int:
        return sum(1 for gap in self.reply_gaps if gap < 0)


async def ws_latency(
    rest_url: str, ws_base: str, users: list[BenchUser], *, sockets: int, mutations: int, concurrency: int = 4
) -> WsResult:
    arrivals: dict[str, list[float]] = defaultdict(list)  # title → perf_counter at arrival
    lags: list[float] = []  # event timestamp (emitted after commit on A) → arrival on B
    sent: dict[str, float] = {}
    per_user: dict[uuid.UUID, int] = defaultdict(int)
    readers: list[asyncio.Task[None]] = []
    open_ws: list[aiohttp.ClientWebSocketResponse] = []
    ws_url = ws_base.replace("http://", "ws://").replace("https://", "wss://") + "/ws/"

    async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                now, wall = time.perf_counter(), time.time()
                frame = json.loads(msg.data)
                if frame.get("event") == "booking.created" and frame["data"]["title"].startswith("ws-"):
                    arrivals[frame["data"]["title"]].append(now)
                    emitted = datetime.fromisoformat(frame["timestamp"].replace("Z", "+00:00")).timestamp()
                    lags.append(wall - emitted)

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
        expected = sum(per_user[users[i % len(users)].id] for i in range(mutations) if f"ws-{i}" in sent)
        deadline = time.monotonic() + 10.0
        while len(lags) < expected and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll with a deadline)
            await asyncio.sleep(0.05)
        reply_gaps = [t - sent[title] for title, times in arrivals.items() if title in sent for t in times]
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in open_ws), return_exceptions=True)
    return WsResult(len(open_ws), len(sent), expected, lags, reply_gaps)


def summary(r: WsResult) -> tuple[float, float]:
    return pct(r.latencies, 0.5), pct(r.latencies, 0.99)
