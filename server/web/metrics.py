"""Prometheus metrics of one web process, in their own registry (tests build many apps), plus the
reminder delivery figures every worker keeps in Redis (server/bus/jobstats.py), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from server.bus.jobstats import Snapshot

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The `method` label: these, or OTHER (HTTP's parser takes some thirty methods, WebDAV's among them).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CACHED_SERIES = 4096  # (method, route, status) series whose children are kept at hand


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.actors = Gauge("actors_active", "Live per-user actors", registry=self.registry)
        self.mailbox_depth = Gauge(
            "actor_mailbox_depth", "Messages waiting in all mailboxes", registry=self.registry
        )
        self.websockets = Gauge("websocket_connections", "Open WebSocket connections", registry=self.registry)
        self.reminders_scheduled = Counter(
            "reminders_scheduled_total",
            "Reminders armed or moved by bookings made through this process (counted once committed)",
            registry=self.registry,
        )
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request in the request counter and, unless it became a WebSocket (101: its lifetime is
        not a latency), the latency histogram. The labelled children are looked up once per series:
        prometheus_client's `labels()` locks and builds a key on every call (docs/BENCHMARKS.md)."""
        if method not in METHODS:
            method = "OTHER"
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route) if status != 101 else None,
            )
            if len(self._series) < _CACHED_SERIES:
                self._series[key] = series
        series[0].inc()
        if series[1] is not None:
            series[1].observe(seconds)


# Workers deliver reminders, web processes do not: these come from Redis and are the same on every web
# process, so a dashboard takes one process's value (max), never the sum.
_CLUSTER = "all workers, read from Redis; the same on every web process: do not sum across processes"


def reminder_delivery_families(snapshot: Snapshot) -> list[Metric]:
    sent = CounterMetricFamily("reminders_sent", f"Reminders delivered ({_CLUSTER})")
    sent.add_metric([], snapshot.counters.get("sent", 0))
    lateness = GaugeMetricFamily(
        "reminder_lateness_seconds",
        f"Seconds after due of the latest deliveries, nearest-rank quantiles ({_CLUSTER})",
        labels=["quantile"],
    )
    for name, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
        value = snapshot.lateness.get(name)
        if value is not None:
            lateness.add_metric([quantile], float(value))
    samples = GaugeMetricFamily(
        "reminder_lateness_samples",
        f"Deliveries behind the lateness quantiles ({_CLUSTER})",
        value=float(snapshot.lateness.get("samples") or 0),
    )
    return [sent, lateness, samples]


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(families: Iterable[Metric]) -> bytes:
    """Prometheus text for metric families built at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
