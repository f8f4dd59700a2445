"""A bounded soak (make test-slow): mixed REST load and reconnecting WebSockets against two real web
processes for SOAK_SECONDS (default 150). No 5xx, no unexpected status, no error frame, every pushed
event belongs to the socket's user, and each process's RSS grows less than SOAK_RSS_LIMIT_MIB (20)
between the end of the warm-up and the end of the run. Figures are printed (docs/FAULTS.md has a run).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.faults import call, register, rss_mib
from tests.processes import WebProcess, start_web, stop, web_env
from tests.ws_support import booking_data

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "150"))
WARM_UP = min(30.0, SOAK_SECONDS / 5)  # imports, pools, caches and allocator arenas settle first
RSS_LIMIT_MIB = float(os.environ.get("SOAK_RSS_LIMIT_MIB", "20"))
USERS = 8
SOCKETS = 8
OPS_PER_USER_PER_SECOND = 20  # paced: a shared 2-core machine, and a steady state rather than a flood
SERVER_EVENTS = {"booking.created", "booking.updated", "booking.deleted", "booking.reminder"}

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(int(SOAK_SECONDS) + 180)]


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)  # "create 201", "list 200", ...
    unexpected: list[str] = field(default_factory=list)
    frames: Counter[str] = field(default_factory=Counter)
    bad_frames: list[Any] = field(default_factory=list)
    connects: int = 0


EXPECTED = {"create": 201, "list": 200, "get": 200, "update": 200, "delete": 204}


async def user_load(
    procs: list[WebProcess], session: dict[str, Any], tally: Tally, until: float, seed: int
) -> None:
    rng = random.Random(seed)
    token = session["accessToken"]
    mine: list[str] = []
    slots = itertools.count()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while time.monotonic() < until:
            started = time.monotonic()
            base = rng.choice(procs).base_url + "/api/booking"
            op = rng.choices(["create", "list", "get", "update", "delete"], [4, 3, 2, 2, 2])[0]
            if not mine:
                op = "create"
            elif len(mine) > 20:
                op = "delete"
            if op == "create":
                body = booking_data(hours=24 + 2 * next(slots), title=f"soak {uuid.uuid4().hex[:8]}")
                answer = await call(http, "POST", base, token=token, json=body)
                if answer.status == 201:
                    mine.append(answer.body["id"])
            elif op == "list":
                answer = await call(http, "GET", f"{base}?limit=10&page={rng.randint(1, 3)}", token=token)
            elif op == "get":
                answer = await call(http, "GET", f"{base}/{rng.choice(mine)}", token=token)
            elif op == "update":
                target = rng.choice(mine)
                answer = await call(
                    http, "PATCH", f"{base}/{target}", token=token, json={"title": f"soak {seed} edited"}
                )
            else:
                target = mine.pop(rng.randrange(len(mine)))
                answer = await call(http, "DELETE", f"{base}/{target}", token=token)
            tally.statuses[f"{op} {answer.status}"] += 1
            if answer.status != EXPECTED[op]:
                tally.unexpected.append(f"{op} {answer.status} {str(answer.body)[:200]}")
            await asyncio.sleep(max(0.0, 1 / OPS_PER_USER_PER_SECOND - (time.monotonic() - started)))


async def socket_churn(
    procs: list[WebProcess], session: dict[str, Any], tally: Tally, until: float, seed: int
) -> None:
    """Connect to either process, ping, read pushed events for a few seconds, close; again."""
    rng = random.Random(seed)
    user_id = session["user"]["id"]
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            url = rng.choice(procs).base_url.replace("http://", "ws://") + "/ws/"
            async with http.ws_connect(
                url, headers={"Authorization": f"Bearer {session['accessToken']}"}
            ) as ws:
                tally.connects += 1
                await ws.send_json({"event": "ping", "id": "p"})
                stay_until = min(until, time.monotonic() + rng.uniform(1.0, 6.0))
                while (left := stay_until - time.monotonic()) > 0:
                    try:
                        msg = await ws.receive(timeout=left)
                    except TimeoutError:
                        break
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        tally.bad_frames.append(f"{msg.type!r} close code {ws.close_code}")
                        break
                    frame = msg.json()
                    tally.frames[frame.get("event", "?")] += 1
                    if frame.get("event") == "pong":
                        continue
                    if frame.get("event") not in SERVER_EVENTS or frame["data"].get("userId") != user_id:
                        tally.bad_frames.append(frame)


async def sample_rss(procs: list[WebProcess], samples: list[tuple[float, list[float]]], until: float) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - started, [rss_mib(p.process.pid) for p in procs]))
        await asyncio.sleep(min(5.0, max(0.0, until - time.monotonic())))
    samples.append((time.monotonic() - started, [rss_mib(p.process.pid) for p in procs]))


async def test_soak_mixed_load_and_reconnecting_sockets_on_two_processes(
    database_url: str, redis_url: str
) -> None:
    prefix = f"soak{uuid.uuid4().hex[:8]}:"
    ttl = str(min(86400, int(SOAK_SECONDS) + 600))  # tokens outlive the run, however long it is set
    procs = await asyncio.to_thread(
        start_web, 2, web_env(database_url, redis_url, prefix, ACCESS_TOKEN_TTL=ttl)
    )
    tally = Tally()
    samples: list[tuple[float, list[float]]] = []
    try:
        async with aiohttp.ClientSession() as http:
            sessions = [await register(http, procs[n % 2].base_url) for n in range(USERS)]
        began = time.monotonic()
        until = began + SOAK_SECONDS
        await asyncio.gather(
            sample_rss(procs, samples, until),
            *(user_load(procs, s, tally, until, seed=n) for n, s in enumerate(sessions)),
            *(socket_churn(procs, sessions[n % USERS], tally, until, seed=100 + n) for n in range(SOCKETS)),
        )
        elapsed = time.monotonic() - began
    finally:
        exits = await asyncio.to_thread(stop, procs)

    after_warm_up = [values for at, values in samples if at >= WARM_UP]
    first, last = after_warm_up[:3], after_warm_up[-3:]
    requests = sum(tally.statuses.values())
    print(  # noqa: T201
        f"\nsoak {elapsed:.0f}s (warm-up {WARM_UP:.0f}s): {requests} requests "
        f"({requests / elapsed:.0f}/s), {tally.connects} socket connects, frames {dict(tally.frames)}"
    )
    print(f"statuses: {dict(sorted(tally.statuses.items()))}")  # noqa: T201
    growth = []
    for n, web in enumerate(procs):
        start = statistics.median(v[n] for v in first)
        end = statistics.median(v[n] for v in last)
        growth.append(end - start)
        print(  # noqa: T201
            f"{web.base_url} RSS MiB: at launch+register {samples[0][1][n]:.1f}, after warm-up {start:.1f}, "
            f"end {end:.1f}, growth {end - start:+.1f}, peak {max(v[n] for _, v in samples):.1f}"
        )
    assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]
    assert not tally.unexpected, tally.unexpected[:20]
    assert not tally.bad_frames, tally.bad_frames[:20]
    assert not any(key.split()[1].startswith("5") for key in tally.statuses), tally.statuses
    assert tally.frames["booking.created"] > 0  # events did flow, across processes too
    assert all(g < RSS_LIMIT_MIB for g in growth), f"RSS grew {growth} MiB (limit {RSS_LIMIT_MIB})"
