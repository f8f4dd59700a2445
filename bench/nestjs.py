"""Create throughput of the NestJS service this project re-implements (seed-README.md), under the load
shape `python -m bench` puts on ours, so the two can be read side by side on one machine:

    .venv/bin/python -m bench.nestjs --url http://127.0.0.1:3100 --pid PID \\
        [--concurrency 32] [--duration 10] [--warmup 2] [--users 64]

It registers and logs in `--users` users through the service's API (argon2 on its side, so this takes
a few seconds), then `--concurrency` workers create bookings for `--warmup` + `--duration` seconds, each
worker owning its users and giving each create the next free 30-minute slot of that user (the service
rejects overlapping bookings), exactly as bench/create.py's `http_rate`. It prints creates/s, latency
p50/p99, errors, and the CPU milliseconds per create of process PID (the service's node process) and of
the machine's PostgreSQL and Redis server processes (bench.common.CpuMeter; without `--pid`, n/a). The
users and bookings stay in the service's database.

Setting it up follows its README's native development steps, without Docker: in its checkout,
`npm ci && npm run build`, create a database (`createdb -h 127.0.0.1 -U postgres seed_bench`), then
start the booking API alone (its job service is not on the create path) in production mode:

    NODE_ENV=production PORT=3100 POSTGRES_SYNC=true \\
    DATABASE_URL='postgresql://postgres@127.0.0.1:5432/seed_bench?sslmode=disable' \\
    REDIS_URL=redis://127.0.0.1:6379/5 \\
    JWT_SECRET_KEY=<64+ chars> JWT_EXPIRATION_TIME=1h REFRESH_JWT_SECRET_KEY=<64+ chars> \\
    node dist/apps/booking-microservice/main.js &        # PID: $!

What differs from ours, for reading the figures:
- its routes are under /api/v1 (URI versioning): POST /api/v1/auth/register {email, password, role},
  POST /api/v1/auth/login -> {access_token}, POST /api/v1/booking {title, startTime, endTime}, 201;
- it has no migrations: POSTGRES_SYNC=true lets TypeORM create the schema at start-up;
- NODE_ENV=production makes it ask PostgreSQL for TLS; `sslmode=disable` in the URL turns that off for
  a local server without it;
- it has no rate limiting, so nothing needs lifting; startTime must be at least 15 minutes ahead;
- Redis has no key prefix there, hence a database number of its own; each create adds a delayed Bull
  job (its reminder) there and publishes on the `booking.created` channel (channels are server-wide);
- each create writes a log line with the published event: that is part of its cost as shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import aiohttp

from bench.common import BenchUser, ms, say
from bench.create import http_rate

API = "/api/v1"
PASSWORD = "bench password"  # noqa: S105 (throwaway users of a benchmark)


async def login_users(url: str, n: int) -> list[BenchUser]:
    """`n` fresh users (unique to this run, so their slots are free): register, then log in."""
    run = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(8)

    async def one(http: aiohttp.ClientSession, i: int) -> BenchUser:
        body = {"email": f"bench-{run}-{i}@example.com", "password": PASSWORD}
        async with gate:
            async with http.post(f"{url}{API}/auth/register", json={**body, "role": "admin"}) as resp:
                if resp.status != 201:
                    raise SystemExit(f"register failed: {resp.status} {await resp.text()}")
                user_id = uuid.UUID((await resp.json())["id"])
            async with http.post(f"{url}{API}/auth/login", json=body) as resp:
                if resp.status not in (200, 201):
                    raise SystemExit(f"login failed: {resp.status} {await resp.text()}")
                token = (await resp.json())["access_token"]
        return BenchUser(user_id, 0, token)

    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(one(http, i) for i in range(n))))


async def main(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/")
    say(f"nestjs: registering and logging in {args.users} users on {url}")
    users = await login_users(url, args.users)
    # bench/create.py's load, on the NestJS routes: same slots, workers, timing and meter.
    rate = await http_rate(
        [url],
        users,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        web_pids=[args.pid] if args.pid else (),
        path=f"{API}/booking",
    )
    node, servers = rate.cpu_ms
    cpu = f"node {node:.2f} ms / PostgreSQL+Redis {servers:.2f} ms" if args.pid else "n/a (no --pid)"
    print(f"NestJS create over HTTP, c={args.concurrency}, {args.users} users, {rate.seconds:.1f} s measured")
    print(f"  creates/s               {rate.per_second:,.0f}/s ({rate.count} created)")
    print(f"  latency p50/p99         {ms(rate.p50)} / {ms(rate.p99)}")
    print(f"  errors                  {rate.errors}")
    print(f"  CPU per create          {cpu}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.nestjs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="the NestJS service's base URL (without /api/v1)")
    parser.add_argument("--pid", type=int, help="its node process, for CPU per create")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured create load")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--users", type=int, default=64)
    parsed = parser.parse_args()
    if parsed.users < parsed.concurrency:
        parser.error("--users must be at least --concurrency (each worker owns its own users)")
    asyncio.run(main(parsed))
