"""cProfile (or py-spy) one `booking serve` process under the create load:

    .venv/bin/python -m bench.profile [--seconds 8] [--out /tmp/web.prof] [--py-spy PATH]

py-spy is not a dependency; `--py-spy` takes the path of one installed anywhere (`pip install py-spy`
in a throwaway venv). It samples the running process from outside, at full speed, and prints the share
of samples each frame is on (inclusive) and at the top of (own).

Same throwaway database / Redis prefix / env as `python -m bench`; prints the top functions by
cumulative and by own time, in CPU seconds of the measured window only (bench/cpuprof.py), so start-up
and a busy machine do not show in it. cProfile slows the process down (~2x), so read it for shares, not
rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from bench import create
from bench.common import ROOT, Stack, say
from tests.processes import free_ports, wait_healthy


async def main(args: argparse.Namespace) -> None:
    stack = Stack(args.database_url, args.redis_url, 8)
    await stack.create_database()
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(  # noqa: S603, ASYNC220 (our own interpreter; returns at once)
            [sys.executable, "-m", "bench.cpuprof", args.out, "serve", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **stack.env(), "HOST": "127.0.0.1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            await asyncio.to_thread(wait_healthy, url, time.monotonic() + 60, proc)
            users = await stack.seed_users(256, "prof")
            loop = asyncio.get_running_loop()
            if args.py_spy:  # sampling, at full speed: py-spy reads the process from outside
                sampler = loop.run_in_executor(None, _py_spy, args.py_spy, proc.pid, args.seconds, args.out)
            else:  # profile the measured window only, not the warm-up (bench/cpuprof.py)
                loop.call_later(1.0, proc.send_signal, signal.SIGUSR1)
            rate = await create.http_rate([url], users, concurrency=32, duration=args.seconds, warmup=1.0)
            if args.py_spy:
                await sampler
            else:
                proc.send_signal(signal.SIGUSR2)
            p99 = rate.p99 * 1000
            how = "under py-spy" if args.py_spy else "under cProfile"
            say(f"{how}: {rate.per_second:,.0f}/s, p99 {p99:.1f} ms, {rate.errors} errors")
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
            await stack.drop_database()
            await stack.drop_keys()
    if args.py_spy:
        _print_samples(args.out)
        return
    stats = pstats.Stats(args.out)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)


def _py_spy(binary: str, pid: int, seconds: float, out: str) -> None:
    """Sample `pid` from 1 s in (after the warm-up) for `seconds`, active frames only, raw stacks."""
    time.sleep(1.0)
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    command += ["--nonblocking", "--format", "raw", "--output", out]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # noqa: S603 (the py-spy given)


def _print_samples(path: str, top: int = 40) -> None:
    """py-spy's raw stacks (`frame;frame;… count`) as shares of the samples: inclusive and own."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as raw:
        for line in raw:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            n = int(count)
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    say(f"{total} samples")
    for title, table in (("inclusive", inclusive), ("own", own)):
        print(f"\n{title}:")
        for frame, n in table.most_common(top):
            print(f"{100 * n / total:5.1f} %  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--py-spy", metavar="BIN", help="sample with this py-spy binary instead of cProfile (no slow-down)"
    )
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "booking-web.prof"))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1/postgres",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL")
        or os.environ.get("TEST_REDIS_URL")
        or "redis://127.0.0.1:6379/0",
    )
    asyncio.run(main(parser.parse_args()))
