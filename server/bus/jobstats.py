"""Reminder delivery counters shared by every worker process, kept in Redis under the key prefix.

Workers write (one pipeline per delivery); the job service reads. Keys:
- `<prefix>jobs:counters`  hash: sent, duplicate, inactive, early, failed, retried
- `<prefix>jobs:lateness`  list: seconds after due of the latest `LATENESS_SAMPLES` sends, newest first
- `<prefix>jobs:failures`  list: JSON `{at, bookingId, dueAt, error}` of the latest failures (error type
  only: a message could carry a URL with a password)
- `<prefix>jobs:failed:<booking id>:<due at>`  a marker: the next attempt at this reminder is a retry
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LATENESS_SAMPLES = 10_000
RECENT_FAILURES = 100
RETRY_MARKER_TTL = 24 * 3600
COUNTERS = ("sent", "duplicate", "inactive", "early", "failed", "retried")

# An attempt at a reminder whose previous attempt failed counts as a retry (the reconciler or a
# redelivery brought it back); the marker is consumed atomically, so two racing attempts count once.
_COUNT_RETRY = """
if redis.call('DEL', KEYS[1]) == 1 then
  return redis.call('HINCRBY', KEYS[2], 'retried', 1)
end
return 0
"""


@dataclass(frozen=True, slots=True)
class JobKeys:
    prefix: str

    @property
    def counters(self) -> str:
        return f"{self.prefix}jobs:counters"

    @property
    def lateness(self) -> str:
        return f"{self.prefix}jobs:lateness"

    @property
    def failures(self) -> str:
        return f"{self.prefix}jobs:failures"

    def retry_marker(self, booking_id: uuid.UUID, due_at: str) -> str:
        return f"{self.prefix}jobs:failed:{booking_id}:{due_at}"


class JobStats:
    """The writer side, used by the reminder task."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self.keys = JobKeys(prefix)

    async def record(
        self,
        *,
        booking_id: uuid.UUID,
        due_at: str,
        status: str,
        lateness: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Count one delivery attempt. Never raises: the delivery's own effect already happened."""
        keys = self.keys
        marker = keys.retry_marker(booking_id, due_at)
        pipe = self._redis.pipeline(transaction=False)
        pipe.eval(_COUNT_RETRY, 2, marker, keys.counters)
        pipe.hincrby(keys.counters, status, 1)
        if lateness is not None:
            pipe.lpush(keys.lateness, f"{lateness:.6f}")
            pipe.ltrim(keys.lateness, 0, LATENESS_SAMPLES - 1)
        if error is not None:
            failure = {
                "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "bookingId": str(booking_id),
                "dueAt": due_at,
                "error": type(error).__name__,
            }
            pipe.lpush(keys.failures, json.dumps(failure))
            pipe.ltrim(keys.failures, 0, RECENT_FAILURES - 1)
            pipe.set(marker, "1", ex=RETRY_MARKER_TTL)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("job counters not recorded for %s (%s)", booking_id, type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    counters: dict[str, int]
    lateness: dict[str, float | int | None]
    failures: list[dict[str, Any]]


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarise(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"samples": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50": round(percentile(ordered, 0.50), 6),
        "p99": round(percentile(ordered, 0.99), 6),
        "max": round(ordered[-1], 6),
    }


async def read(redis: Redis, *, prefix: str) -> Snapshot:
    keys = JobKeys(prefix)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.counters)
    pipe.lrange(keys.lateness, 0, -1)
    pipe.lrange(keys.failures, 0, -1)
    raw_counters, raw_lateness, raw_failures = await pipe.execute()
    decoded = {_text(k): int(v) for k, v in raw_counters.items()}
    counters = {name: decoded.get(name, 0) for name in COUNTERS}
    failures: list[dict[str, Any]] = []
    for item in raw_failures:
        try:
            failures.append(json.loads(item))
        except ValueError:
            continue
    return Snapshot(counters, summarise([float(x) for x in raw_lateness]), failures)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the stream ----------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """Redis replies as JSON-ready values (bytes → str, recursively)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


async def queue_stats(redis: Redis, *, stream: str, group: str) -> dict[str, Any]:
    """Length, consumer groups, our group's consumers (with idle times) and its pending summary.

    A stream or group that does not exist yet (no worker has started, or Redis was flushed) reads as
    empty rather than failing."""
    length = int(await redis.xlen(stream))
    groups: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []
    pending: dict[str, Any] = {"count": 0, "oldestId": None, "newestId": None, "consumers": []}
    if length or await redis.exists(stream):
        groups = [
            {
                "name": g.get("name"),
                "consumers": g.get("consumers", 0),
                "pending": g.get("pending", 0),
                "lastDeliveredId": g.get("last-delivered-id"),
                "lag": g.get("lag"),
            }
            for g in plain(await redis.xinfo_groups(stream))
        ]
    if any(g["name"] == group for g in groups):
        consumers = [
            {
                "name": c.get("name"),
                "pending": c.get("pending", 0),
                "idleMs": c.get("idle"),
                "inactiveMs": c.get("inactive"),
            }
            for c in plain(await redis.xinfo_consumers(stream, group))
        ]
        summary = plain(await redis.xpending(stream, group))
        pending = {
            "count": int(summary.get("pending", 0)),
            "oldestId": summary.get("min"),
            "newestId": summary.get("max"),
            "consumers": summary.get("consumers", []),
        }
    ours = next((g for g in groups if g["name"] == group), None)
    if ours is None:
        waiting = length
    elif ours["lag"] is not None:
        waiting = int(ours["lag"])
    else:
        waiting = await count_after(redis, stream, ours["lastDeliveredId"])
    return {
        "stream": stream,
        "group": group,
        "length": length,
        "waiting": waiting,
        "groups": groups,
        "consumers": consumers,
        "pending": pending,
    }


async def count_after(redis: Redis, stream: str, last_id: str | None, *, page: int = 1000) -> int:
    """The entries of `stream` after `last_id`: what a group has not been handed yet.

    Redis 7 reports this as the group's `lag`; Redis 6.2 has no `lag`, and 7.x answers null after
    entries were deleted past the group's position. Counted with XRANGE pages of `page` entries
    (one round trip per page of waiting messages)."""
    count = 0
    start = f"({last_id}" if last_id else "-"
    while True:
        entries = await redis.xrange(stream, min=start, max="+", count=page) or []
        count += len(entries)
        if len(entries) < page:
            return count
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
