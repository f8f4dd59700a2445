"""Prometheus metrics of one web process, in their own registry (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
            "reminders_scheduled_total", "Reminders scheduled by this process", registry=self.registry
        )
