"""The webhook delivery figures: counted by every worker, kept in Redis, read for /metrics and
/jobs/metrics together with the outbox's queue depth (docs/WEBHOOKS.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis

from server.worker.webhook_http import Answer
from storage import webhook_outbox as outbox_store
from storage.db import Database

log = logging.getLogger(__name__)


# --- figures in Redis (every worker adds to them; /metrics and /jobs/metrics read them) -------------------

LATENCY_SAMPLES = 1000


class WebhookStats:
    """Counted in memory per attempt, added to Redis by `flush` (the worker flushes every
    FLUSH_SECONDS and at shutdown): one Redis round trip per interval, not per attempt."""

    FLUSH_SECONDS = 0.5

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._counters = f"{prefix}webhooks:counters"
        self._latency = f"{prefix}webhooks:latency"
        self._pending: dict[str, int] = {}
        self._samples: list[float] = []

    def record(self, answer: Answer, *, retried: bool) -> None:
        names = ["sent" if answer.outcome == "delivered" else "failed"]
        if retried:
            names.append("retried")
        if answer.outcome in ("gone", "refused"):
            names.append(answer.outcome)
        for name in names:
            self._pending[name] = self._pending.get(name, 0) + 1
        self._samples.append(answer.latency_ms)

    async def flush(self) -> None:
        if not self._pending and not self._samples:
            return
        counts, samples = self._pending, self._samples[-LATENCY_SAMPLES:]
        self._pending, self._samples = {}, []
        pipe = self._redis.pipeline(transaction=False)
        for name, value in counts.items():
            pipe.hincrby(self._counters, name, value)
        if samples:
            pipe.lpush(self._latency, *samples)
            pipe.ltrim(self._latency, 0, LATENCY_SAMPLES - 1)
        try:
            await pipe.execute()
        except Exception:  # kept for the next flush: figures are late, never lost to a blip
            for name, value in counts.items():
                self._pending[name] = self._pending.get(name, 0) + value
            self._samples[:0] = samples
            raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("webhook figures not flushed to Redis (%s)", type(exc).__name__)

    async def read(self) -> dict[str, Any]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._counters)
        pipe.lrange(self._latency, 0, -1)
        counters_raw, samples_raw = await pipe.execute()
        counters = {"sent": 0, "failed": 0, "retried": 0, "gone": 0, "refused": 0}
        for key, value in counters_raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            counters[name] = int(value)
        samples = sorted(float(v) for v in samples_raw)
        return {"counters": counters, "latencyMs": _quantiles(samples)}


def _quantiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    def rank(q: float) -> float | None:
        if not samples:
            return None
        return samples[min(len(samples) - 1, max(0, int(q * len(samples) + 0.999999) - 1))]

    return {
        "p50": rank(0.5),
        "p99": rank(0.99),
        "max": samples[-1] if samples else None,
        "samples": len(samples),
    }


# --- figures for /metrics and /jobs/metrics ------------------------------------------------------------


async def figures(redis: Redis, db: Database, *, prefix: str) -> dict[str, Any]:
    """Every worker's delivery counters and latency quantiles (Redis) and the outbox's queue depth
    (pending messages in PostgreSQL): the same on every process."""
    stats = await WebhookStats(redis, prefix=prefix).read()
    async with db.connect() as conn:
        stats["queueDepth"] = await outbox_store.count_pending(conn)
    return stats


def metric_families(data: dict[str, Any]) -> list[Metric]:
    deliveries = CounterMetricFamily(
        "webhook_deliveries",
        "Webhook attempts by outcome, all workers: sent (2xx), failed, retried (attempts after the first), "
        "gone (410), refused (SSRF guard); read from Redis, do not sum across processes",
        labels=["outcome"],
    )
    for outcome, value in data["counters"].items():
        deliveries.add_metric([outcome], value)
    latency = GaugeMetricFamily(
        "webhook_latency_milliseconds",
        "Latency of the latest webhook attempts, nearest-rank quantiles, all workers",
        labels=["quantile"],
    )
    for name, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
        value = data["latencyMs"].get(name)
        if value is not None:
            latency.add_metric([quantile], float(value))
    depth = GaugeMetricFamily(
        "webhook_queue_depth",
        "Webhook messages not yet delivered or given up (the outbox)",
        value=data["queueDepth"],
    )
    return [deliveries, latency, depth]
