"""The benchmark tool at its tiny size, so it cannot rot. Never asserts a timing: only that it runs to the
end and prints the summary table with every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "create over HTTP",
    "create latency p50/p99",
    "CPU per create",
    "create on aiohttp + asyncpg alone (floor)",
    "WS commit->frame on other process",
    "reminder lateness",
    "webhook commit->delivery",
    "webhook deliveries/s",
    "CPU per webhook",
    "list p99, page 1",
    "list p99, page",
    "memory per idle WebSocket",
    "memory per idle actor",
    "sockets one web process holds",
    "resource create c=32, capacity 1",
    "resource create c=32, capacity 5",
    "resource race",
    "availability slots p99",
    "availability next p99",
    "series create p99",
    "calendar feed p50/p99, ",
    "calendar feed p50/p99, unchanged",
    "calendar feed first render",
    "calendar feed size",
    "scheduler CPU per second",
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_bench_quick_prints_the_whole_summary_table(database_url: str, redis_url: str) -> None:
    # The tool makes (and drops) its own database on the same server as the suite's.
    env = {**os.environ, "BENCH_DATABASE_URL": database_url, "BENCH_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "bench summary (quick" in out, out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "figure"
    body = lines[1:]
    assert len(body) == len(ROWS), out
    for line, prefix in zip(body, ROWS, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0].startswith(prefix), line
        assert len(cells) == 5 and cells[1] and cells[1] != "skipped", line
        assert cells[4] in {"MET", "MISSED", "-"}, line
