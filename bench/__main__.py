"""The benchmark tool: `python -m bench [--quick] [--only create,ws,reminders,webhooks,list,memory,feeds]
[--url ...]`.

It creates a throwaway database on the PostgreSQL in BENCH_DATABASE_URL (else TEST_DATABASE_URL), uses a
unique key prefix on the Redis in BENCH_REDIS_URL (else TEST_REDIS_URL), starts two `booking serve`
processes on free ports (and `booking worker` + `booking scheduler` for reminders), loads them from this
process over loopback with a live counter on stderr, drops the database, and prints the summary table on
stdout: every figure next to its reference measured in the same run. See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import (
    availability,
    create,
    feeds,
    floor,
    listing,
    memory,
    reminders,
    resources,
    scheduler,
    series,
    webhooks,
    ws,
)  # fmt: skip
from bench.common import CpuMeter, Stack, ms, pct, register_users, say

SCENARIOS = (
    "create", "ws", "reminders", "webhooks", "list", "memory", "resources", "availability", "series", "feeds",
    "scheduler",
)  # fmt: skip
FULL = {
    "duration": 10.0, "warmup": 2.0, "create_users": 512, "sockets": 1000, "ws_users": 250,
    "mutations": 500, "reminders": 2000, "spread": 20.0, "reminder_users": 200,
    "list_rows": 1_000_000, "list_per_user": 10_000, "samples": 200,
    "mem_sockets": 1000, "mem_actors": 1000, "capacity": 10_000,
    "hook_rate": 200.0, "hook_seconds": 10.0, "hook_burst": 2000, "hook_users": 200,
    "feed_bookings": 2000, "sched_sizes": "1000,10000,100000,1000000", "sched_seconds": 10.0,
}  # fmt: skip
QUICK = {
    "duration": 1.5, "warmup": 0.5, "create_users": 64, "sockets": 40, "ws_users": 10,
    "mutations": 20, "reminders": 20, "spread": 2.0, "reminder_users": 5,
    "list_rows": 4_000, "list_per_user": 1_000, "samples": 20,
    "mem_sockets": 30, "mem_actors": 5, "capacity": 60,
    "hook_rate": 20.0, "hook_seconds": 1.5, "hook_burst": 30, "hook_users": 5,
    "feed_bookings": 150, "sched_sizes": "10,100", "sched_seconds": 1.5,
}  # fmt: skip


@dataclass
class Row:
    figure: str
    measured: str
    reference: str
    target: str
    verdict: str


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("MET" if ok else "MISSED")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    p.add_argument("--quick", action="store_true", help="a tiny size (the smoke test); figures mean little")
    p.add_argument(
        "--url", help="target a running stack (comma-separated web URLs: A[,B]); create and ws only"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL"),
        help="a PostgreSQL server where a throwaway database may be created (default: BENCH_DATABASE_URL,"
        " else TEST_DATABASE_URL, else an embedded PostgreSQL started for the run)",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL") or os.environ.get("TEST_REDIS_URL"),
        help="default: BENCH_REDIS_URL, else TEST_REDIS_URL, else an embedded Redis started for the run",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=8,
        help="DB_POOL_SIZE per web process (the shared server allows 100 connections)",
    )
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, help="seconds of measured create load (each of raw and HTTP)")
    p.add_argument("--sockets", type=int, help="open WebSockets on process B for the latency test")
    p.add_argument("--reminders", type=int, help="reminders due within one minute")
    p.add_argument("--list-rows", type=int, help="rows in the bookings table for the list test")
    p.add_argument("--list-per-user", type=int, help="bookings of the listed user")
    p.add_argument("--capacity", type=int, help="sockets to hold open on one web process")
    p.add_argument("--hook-rate", type=float, help="booking changes per second for the webhook latency")
    p.add_argument("--hook-burst", type=int, help="bookings created at once for the webhook rate")
    p.add_argument("--feed-bookings", type=int, help="bookings of the user whose calendar feed is fetched")
    p.add_argument("--sched-sizes", help="pending reminders for the scheduler scenario (comma-separated)")
    p.add_argument("--sched-seconds", type=float, help="seconds the scheduler is measured at each size")
    args = p.parse_args()
    size = QUICK if args.quick else FULL
    for key, value in size.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    stack = Stack(args.database_url, args.redis_url, args.pool_size)
    if args.url:
        stack.external = [u.rstrip("/") for u in args.url.split(",")]
    else:
        say(f"bench: database {stack.db_name}, Redis prefix {stack.prefix}")
        await stack.create_database()
    try:
        if not args.url and set(args.only) & {
            "create",
            "ws",
            "reminders",
            "webhooks",
            "list",
            "resources",
            "availability",
            "series",
            "feeds",
        }:
            say("bench: starting two `booking serve` processes")
            await stack.start_web(2)
        for name in args.only:
            started = time.monotonic()
            say(f"bench: {name}")
            rows += await SCENARIO_RUNNERS[name](stack, args)
            say(f"bench: {name} done in {time.monotonic() - started:.1f}s")
    finally:
        await stack.stop()
        if not args.url:
            await stack.drop_database()
            await stack.drop_keys()
    return rows


async def run_create(stack: Stack, args: argparse.Namespace) -> list[Row]:
    c = args.concurrency
    if stack.external:
        async with aiohttp.ClientSession() as http:
            users = await register_users(stack.urls, min(args.create_users, 4 * c), http)
        raw = None
    else:
        raw_users = await stack.seed_users(args.create_users, "raw")
        users = await stack.seed_users(args.create_users, "http")
        raw = await create.raw_rate(
            stack.database_url,
            raw_users,
            concurrency=c,
            pool=2 * args.pool_size,
            duration=args.duration,
            warmup=args.warmup,
        )
    http = await create.http_rate(
        stack.urls,
        users,
        concurrency=c,
        duration=args.duration,
        warmup=args.warmup,
        web_pids=[w.process.pid for w in stack.webs],
    )
    floor_rate = None
    if not stack.external:  # the framework alone, same client, statement and pool (bench/floor.py)
        floor_rate = await floor.rate(
            stack.database_url,
            await stack.seed_users(args.create_users, "floor"),
            processes=len(stack.webs),
            pool=args.pool_size,
            concurrency=c,
            duration=args.duration,
            warmup=args.warmup,
        )
    ratio = http.per_second / raw.per_second if raw and raw.per_second else math.nan
    ref = f"raw asyncpg {raw.per_second:,.0f}/s ({ratio:.0%})" if raw else "raw: n/a (--url)"
    ok = http.per_second >= 1000 and (raw is None or ratio >= 0.5)
    errors = f", {http.errors} errors" if http.errors else ""
    return [
        Row(
            f"create over HTTP, c={c}",
            f"{http.per_second:,.0f}/s{errors}",
            ref,
            ">= 50% of raw and >= 1,000/s",
            verdict(ok),
        ),
        Row(
            "create latency p50/p99",
            f"{ms(http.p50)} / {ms(http.p99)}",
            f"raw {ms(raw.p50)} / {ms(raw.p99)}" if raw else "n/a",
            "-",
            "-",
        ),
        Row(
            "CPU per create: web / PostgreSQL+Redis",
            f"{http.cpu_ms[0]:.2f} ms / {http.cpu_ms[1]:.2f} ms",
            f"raw: PostgreSQL+Redis {raw.cpu_ms[1]:.2f} ms" if raw else "n/a",
            "<= 0.5 ms web",
            verdict(http.cpu_ms[0] <= 0.5),
        ),
        Row(
            "create on aiohttp + asyncpg alone (floor)",
            f"{floor_rate.cpu_ms[0]:.2f} ms web CPU, {floor_rate.per_second:,.0f}/s"
            if floor_rate
            else "n/a (--url)",
            f"the service's own share: {http.cpu_ms[0] - floor_rate.cpu_ms[0]:.2f} ms"
            if floor_rate
            else "n/a",
            "-",
            "-",
        ),
    ]


async def run_ws(stack: Stack, args: argparse.Namespace) -> list[Row]:
    if stack.external:
        async with aiohttp.ClientSession() as http:
            users = await register_users(stack.urls, args.ws_users, http)
    else:
        users = await stack.seed_users(args.ws_users, "ws")
    a, b = stack.urls[0], stack.urls[-1]
    r = await ws.ws_latency(a, b, users, sockets=args.sockets, mutations=args.mutations)
    p50, p99 = ws.summary(r)
    ok = p99 <= 0.010 and r.lost == 0
    return [
        Row(
            f"WS commit->frame on other process, {r.sockets} sockets",
            f"p50 {ms(p50)} / p99 {ms(p99)}",
            f"{len(r.latencies)}/{r.expected} frames, lost {r.lost}; REST reply->frame p50 "
            f"{ms(pct(r.reply_gaps, 0.5))} ({r.early} frames beat the reply)",
            "p99 <= 10 ms",
            verdict(ok),
        )
    ]


def skipped(figures: list[str], target: str) -> list[Row]:
    return [Row(f, "skipped", "needs the tool's own stack (not --url)", target, "-") for f in figures]


async def run_reminders(stack: Stack, args: argparse.Namespace) -> list[Row]:
    figure = f"reminder lateness, {args.reminders} due in one minute"
    if stack.external:
        return skipped([figure], "p99 <= 1 s, 0 lost, 0 dup")
    users = await stack.seed_users(args.reminder_users, "rem")
    say("bench: starting `booking worker` + `booking scheduler`")
    await stack.start_jobs()
    try:
        r = await reminders.reminder_lateness(
            stack.urls, users, redis_url=stack.redis_url, prefix=stack.prefix,
            database_url=stack.database_url, count=args.reminders, spread=args.spread,
        )  # fmt: skip
    finally:
        await stack.stop_jobs()
    ok = r.p(0.99) <= 1.0 and r.lost == 0 and r.duplicated == 0
    return [
        Row(
            figure,
            f"p50 {ms(r.p(0.5))} / p99 {ms(r.p(0.99))} / max {ms(r.p(1.0))}",
            f"lost {r.lost}, duplicated {r.duplicated}; {r.notifications} notification rows",
            "p99 <= 1 s, 0 lost, 0 dup",
            verdict(ok),
        )
    ]


async def run_webhooks(stack: Stack, args: argparse.Namespace) -> list[Row]:
    figures = [
        f"webhook commit->delivery at {args.hook_rate:.0f} changes/s",
        f"webhook deliveries/s, burst of {args.hook_burst}",
    ]
    if stack.external:
        return skipped(figures, "p99 <= 200 ms")
    users = await stack.seed_users(args.hook_users, "hook")
    say("bench: starting `booking worker` + `booking scheduler`")
    await stack.start_jobs()
    meter = CpuMeter([stack.jobs[0][0].pid, *(w.process.pid for w in stack.webs)])
    worker_only = CpuMeter([stack.jobs[0][0].pid])
    meter.start()
    worker_only.start()
    try:
        r = await webhooks.webhook_delivery(
            stack.urls, users, rate=args.hook_rate, duration=args.hook_seconds, burst=args.hook_burst
        )
        changes = r.sent + r.burst
        worker_ms, _ = worker_only.stop(changes)
        all_ms, servers_ms = meter.stop(changes)
    finally:
        await stack.stop_jobs()
    ok = r.p(0.99) <= 0.200 and r.lost == 0 and r.duplicated == 0
    return [
        Row(
            figures[0],
            f"p50 {ms(r.p(0.5))} / p99 {ms(r.p(0.99))} / max {ms(r.p(1.0))}",
            f"{r.sent} sent at {r.rate:.0f}/s; lost {r.lost}, duplicated {r.duplicated}"
            + (f"; creates refused {r.refused}" if r.refused else ""),
            "p99 <= 200 ms, 0 lost",
            verdict(ok),
        ),
        Row(
            figures[1],
            f"{r.burst_per_second:,.0f}/s",
            f"{r.burst} bookings created by 32 clients over HTTP; lost {r.burst_lost}",
            "-",
            "-",
        ),
        Row(
            "CPU per webhook: worker / web+worker / PostgreSQL+Redis",
            f"{worker_ms:.2f} ms / {all_ms:.2f} ms / {servers_ms:.2f} ms",
            "per booking change with one subscribed endpoint (create + delivery)",
            "-",
            "-",
        ),
    ]


async def run_list(stack: Stack, args: argparse.Namespace) -> list[Row]:
    per_user = args.list_per_user
    fillers = max(0, args.list_rows // per_user - 1)
    figures = [f"list p99, page 1 ({per_user:,} of {args.list_rows:,} rows)", "list p99, last page"]
    if stack.external:
        return skipped(figures, "<= 10 ms")
    target = (await stack.seed_users(1, "list"))[0]
    filler_users = await stack.seed_users(fillers, "fill") if fillers else []
    took = await listing.load(stack.database_url, target, filler_users, per_user)
    total = per_user * (fillers + 1)
    say(f"bench: loaded {total:,} bookings in {took:.1f}s")
    http_t, sql_t = await listing.latency(
        stack.urls[0], stack.database_url, target, per_user=per_user, samples=args.samples
    )
    rows = []
    for (name, times), figure in zip(http_t.items(), figures, strict=True):
        p99 = pct(times, 0.99)
        rows.append(
            Row(
                figure if "page 1" in figure else f"list p99, {name}",
                f"{ms(p99)} (p50 {ms(pct(times, 0.5))})",
                f"its statement via asyncpg: p99 {ms(pct(sql_t[name], 0.99))}",
                "<= 10 ms",
                verdict(p99 <= 0.010),
            )
        )
    return rows


async def run_memory(stack: Stack, args: argparse.Namespace) -> list[Row]:
    figures = [
        f"memory per idle WebSocket ({args.mem_sockets} sockets)",
        f"memory per idle actor ({args.mem_actors})",
        "sockets one web process holds",
    ]
    if stack.external:
        return skipped(figures, "-")
    m = await memory.memory(stack, sockets=args.mem_sockets, actors=args.mem_actors, capacity=args.capacity)
    ref = f"process RSS before {m.rss_before_kib / 1024:.1f} MiB"
    held = f"{m.held:,} open at once" + (f" (stopped: {m.refused})" if m.refused else "")
    return [
        Row(figures[0], f"{m.per_socket_kib:.1f} KiB", ref, "<= 50 KiB", verdict(m.per_socket_kib <= 50)),
        Row(
            figures[1],
            f"{m.per_actor_kib:.1f} KiB",
            "(socket+actor) - socket",
            "<= 10 KiB",
            verdict(m.per_actor_kib <= 10),
        ),
        Row(
            figures[2],
            held,
            f"RSS {m.rss_at_capacity_kib / 1024:.0f} MiB; tried {m.capacity_target:,}",
            ">= 10,000",
            verdict(m.held >= 10_000) if m.capacity_target >= 10_000 else "-",
        ),
    ]


async def run_availability(stack: Stack, args: argparse.Namespace) -> list[Row]:
    n = args.list_per_user
    figures = [
        f"availability slots p99 (31 days, {n:,} bookings, {args.list_rows:,}-row table)",
        f"availability next p99 (first free {availability.BUSY_DAYS} days out)",
    ]
    if stack.external:
        return skipped(figures, "needs the tool's own database (bookings are bulk-loaded)")
    owner, caller = await stack.seed_users(2, "avail")
    fillers = await stack.seed_users(max(1, args.list_rows // n), "avfill")
    resource_id, seq, base, rows = await availability.load(
        stack.database_url, owner, fillers, bookings=n, table_rows=args.list_rows, per_user=n
    )
    say(f"bench: {n:,} bookings of one resource over {availability.BUSY_DAYS} days, {rows:,} rows in all")
    slots_t, next_t, sql_t, day = await availability.latency(
        stack.urls[0], stack.database_url, caller, resource_id, seq, base, samples=args.samples
    )
    return [
        Row(
            figures[0],
            f"{ms(pct(slots_t, 0.99))} (p50 {ms(pct(slots_t, 0.5))})",
            f"its full-time read via asyncpg: p99 {ms(pct(sql_t, 0.99))}",
            "<= 20 ms",
            verdict(pct(slots_t, 0.99) <= 0.020),
        ),
        Row(
            figures[1],
            f"{ms(pct(next_t, 0.99))} (p50 {ms(pct(next_t, 0.5))})",
            f"found {day:.1f} days after the first booking",
            "<= 20 ms",
            verdict(pct(next_t, 0.99) <= 0.020),
        ),
    ]


async def run_feeds(stack: Stack, args: argparse.Namespace) -> list[Row]:
    n = args.feed_bookings
    figures = [
        f"calendar feed p50/p99, {n:,} bookings, one changed",
        "calendar feed p50/p99, unchanged",
        "calendar feed first render p50/p99 (nothing cached)",
        "calendar feed size",
    ]
    if stack.external:
        return skipped(figures, "needs the tool's own database (bookings are bulk-loaded)")
    [user] = await stack.seed_users(1, "feed")
    await feeds.load(stack.database_url, user, n)
    say(f"bench: {n:,} bookings, {feeds.SERIES} series of {feeds.SERIES_LENGTH} among them")
    r = await feeds.latency(stack.urls[0], stack.database_url, user, bookings=n, samples=args.samples)
    p = lambda t: f"{ms(pct(t, 0.5))} / {ms(pct(t, 0.99))}"  # noqa: E731
    return [
        Row(figures[0], p(r.fresh), f"GET /api/booking?limit=100: {p(r.listing)}", "-", "-"),
        Row(figures[1], f"{p(r.cached)}; 304: {p(r.not_modified)}", "same ETag, body cached", "-", "-"),
        Row(figures[2], p(r.cold), "in-process, icalendar building and serializing every event", "-", "-"),
        Row(figures[3], f"{r.bytes:,} bytes", f"its two reads via asyncpg: {p(r.sql)}", "-", "-"),
    ]


async def run_resources(stack: Stack, args: argparse.Namespace) -> list[Row]:
    c = args.concurrency
    figures = [
        f"resource create c={c}, capacity 1",
        f"resource create c={c}, capacity 5",
        f"resource race: {resources.RACE_CREATES} creates, one slot, capacity 5",
    ]
    if stack.external:
        return skipped(figures, "needs the tool's own database (resources are seeded)")
    pids = [w.process.pid for w in stack.webs]
    # Interleaved rounds (personal, capacity 1, capacity 5, personal, ...), each with fresh users and
    # resources: load that comes and goes on a shared machine falls on all three alike.
    rounds = 3
    timing = {"concurrency": c, "duration": args.duration / rounds, "warmup": args.warmup, "web_pids": pids}
    parts: dict[str, list[create.Rate]] = {"personal": [], "1": [], "5": []}
    for n in range(rounds):
        users = await stack.seed_users(args.create_users, f"personal{n}")
        parts["personal"].append(await create.http_rate(stack.urls, users, **timing))
        for capacity in (1, 5):
            rooms = await resources.seed_resources(
                stack.database_url, c, capacity=capacity, label=f"cap{capacity}-{n}"
            )
            users = await stack.seed_users(args.create_users, f"res{capacity}-{n}")
            label = f"resource create, capacity {capacity}"
            parts[str(capacity)].append(
                await resources.resource_rate(stack.urls, users, rooms, label=label, **timing)
            )
    personal = resources.combined(parts["personal"])
    rates = [resources.combined(parts["1"]), resources.combined(parts["5"])]
    (room,) = await resources.seed_resources(
        stack.database_url, 1, capacity=resources.RACE_CAPACITY, label="race"
    )
    racers = await stack.seed_users(resources.RACE_CREATES, "race")
    r = await resources.race(stack.database_url, stack.urls, racers, room)
    rows = []
    for figure, rate in zip(figures, rates, strict=False):
        # The target is the rate; the web processes' CPU per create is printed beside it (steadier when
        # something else runs on the machine).
        by_rate = rate.per_second / personal.per_second if personal.per_second else math.nan
        by_cpu = personal.cpu_ms[0] / rate.cpu_ms[0] if rate.cpu_ms[0] else math.nan
        errors = f", {rate.errors} errors" if rate.errors else ""
        rows.append(
            Row(
                figure,
                f"{rate.per_second:,.0f}/s{errors} ({by_rate:.0%}); CPU/create web {rate.cpu_ms[0]:.2f} ms,"
                f" PG+Redis {rate.cpu_ms[1]:.2f} ms",
                f"personal {personal.per_second:,.0f}/s; web {personal.cpu_ms[0]:.2f} ms ({by_cpu:.0%}),"
                f" PG+Redis {personal.cpu_ms[1]:.2f} ms",
                ">= 80% of personal",
                verdict(by_rate >= 0.8),
            )
        )
    wins, losses = r.statuses.get(201, 0), r.statuses.get(409, 0)
    others = {k: v for k, v in r.statuses.items() if k not in (201, 409)}
    exact = wins == resources.RACE_CAPACITY and losses == resources.RACE_CREATES - wins and not others
    rows.append(
        Row(
            figures[2],
            f"{wins} x 201, {losses} x 409{f', other {others}' if others else ''} in {ms(r.seconds)}",
            f"max overlap afterwards {r.max_overlap}",
            f"exactly {resources.RACE_CAPACITY} x 201, no 5xx",
            verdict(exact and r.max_overlap == resources.RACE_CAPACITY),
        )
    )
    return rows


async def run_series(stack: Stack, args: argparse.Namespace) -> list[Row]:
    figure = f"series create p99 ({series.OCCURRENCES} weekly occurrences, one request)"
    if stack.external:
        return skipped([figure], "needs the tool's own database (users are seeded)")
    samples = max(10, args.samples // 2)
    users = await stack.seed_users(samples, "series")
    series_t, single_t = await series.latency(stack.urls[0], users, references=max(3, samples // 10))
    return [
        Row(
            figure,
            f"{ms(pct(series_t, 0.99))} (p50 {ms(pct(series_t, 0.5))}, {len(series_t)} series)",
            f"the same {series.OCCURRENCES} bookings one request at a time: p50 {ms(pct(single_t, 0.5))}"
            f" ({pct(single_t, 0.5) / pct(series_t, 0.5):.1f}x the series)",
            "-",
            verdict(None),
        )
    ]


async def run_scheduler(stack: Stack, args: argparse.Namespace) -> list[Row]:
    sizes = [int(n) for n in str(args.sched_sizes).split(",") if n.strip()]
    figure = f"scheduler CPU per second, {sizes[0]:,} -> {sizes[-1]:,} pending"
    if stack.external:
        return skipped([figure], "flat within 2x")
    costs = await scheduler.scheduler_cost(stack, sizes, args.sched_seconds)
    first, last = costs[0], costs[-1]
    ratio = last.own_ms_per_s / first.own_ms_per_s if first.own_ms_per_s > 0 else math.nan
    return [
        Row(
            figure,
            " / ".join(f"{c.own_ms_per_s:.1f}" for c in costs) + " ms/s",
            "PostgreSQL " + " / ".join(f"{c.postgres_ms_per_s:.1f}" for c in costs) + " ms/s",
            "flat within 2x",
            verdict(ratio <= 2.0 if not math.isnan(ratio) else None),
        )
    ]


SCENARIO_RUNNERS = {
    "create": run_create,
    "ws": run_ws,
    "reminders": run_reminders,
    "webhooks": run_webhooks,
    "list": run_list,
    "memory": run_memory,
    "resources": run_resources,
    "availability": run_availability,
    "series": run_series,
    "feeds": run_feeds,
    "scheduler": run_scheduler,
}


def table(rows: list[Row]) -> str:
    header = Row("figure", "measured", "reference (same run)", "target", "verdict")
    cols = list(
        zip(*[(r.figure, r.measured, r.reference, r.target, r.verdict) for r in [header, *rows]], strict=True)
    )
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for i, r in enumerate([header, *rows]):
        cells = (r.figure, r.measured, r.reference, r.target, r.verdict)
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@contextlib.contextmanager
def servers(args: argparse.Namespace) -> Iterator[str]:
    """Fill in missing server URLs with embedded ones (as `make test` does); a label for the summary."""
    if args.url or (args.database_url and args.redis_url):
        yield "given servers"
        return
    from server.local.embedded import EmbeddedPostgres, EmbeddedRedis

    root = Path(tempfile.mkdtemp(prefix="bench-"))
    say(f"bench: no server URLs given; starting embedded servers under {root}")
    pg = None if args.database_url else EmbeddedPostgres.start(root / "pg")
    rd = None if args.redis_url else EmbeddedRedis.start(root / "redis")
    try:
        args.database_url = args.database_url or (pg.url if pg else "")
        args.redis_url = args.redis_url or (rd.url if rd else "")
        yield "embedded " + " + ".join(n for n, on in (("PostgreSQL", pg), ("Redis", rd)) if on)
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    args = parse()
    started = time.monotonic()
    with servers(args) as where:
        rows = asyncio.run(run(args))
    size = "quick" if args.quick else "full"
    took = time.monotonic() - started
    print(
        f"\nbench summary ({size}; {where}; {os.cpu_count()} CPUs, Python {platform.python_version()};"
        f" {took:.0f}s)"
    )
    print(table(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
