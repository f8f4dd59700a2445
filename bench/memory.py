"""5. Memory per idle WebSocket connection and per idle actor: bench/ws_memory.py, folded in."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

from bench import ws_memory


@dataclass
class MemoryResult:
    sockets: int
    actors: int
    rss_before_kib: float
    per_socket_kib: float
    per_actor_kib: float


def _kib(value: str) -> float:
    number, unit = value.split()
    return float(number) * (1024 if unit == "MiB" else 1)


async def memory(
    database_url: str, redis_url: str, *, sockets: int, actors: int, pool_size: int
) -> MemoryResult:
    os.environ.setdefault("DB_POOL_SIZE", str(pool_size))
    args = argparse.Namespace(redis_url=redis_url, sockets=sockets, actors=actors)
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines are progress, not the result
        rows = dict(await ws_memory.measure(args, database_url))
    return MemoryResult(
        sockets=sockets,
        actors=actors,
        rss_before_kib=_kib(rows["RSS before"]),
        per_socket_kib=_kib(rows["per idle socket"]),
        per_actor_kib=_kib(rows["per idle actor (difference)"]),
    )
