"""The job service's endpoints (`/jobs/…`, an admin or an API key): health, reminder metrics, queue stats,
cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import web
from aiohttp_apigami import docs, request_schema
from marshmallow import Schema, ValidationError, fields, validate
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from actors.domain.errors import FieldError, Forbidden, Unauthorized, ValidationFailed
from actors.services.api_keys import looks_like_key
from actors.services.maintenance import Maintenance
from handlers import health
from handlers.common import bearer_token, json_response
from handlers.schemas import HealthOut, Problem, Strict
from handlers.validation import read_json
from handlers.validation import validate as validate_body
from server.bus import jobstats
from server.web.keys import API_KEYS, AUTH, CURRENT_API_KEY, CURRENT_USER, DB, REDIS, SETTINGS
from server.worker import webhook_stats
from server.worker.broker import group_name, stream_name

routes = web.RouteTableDef()

API_KEY_HEADER = "X-API-Key"
# Either scheme opens every operation (OpenAPI: alternatives are separate entries).
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKey": []}]
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin's access token (`/api/auth/login` of the web API), or an API key "
        "(`bk_…`, from `booking create-api-key`)",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": "An API key (`bk_<prefix>_<secret>`) from `booking create-api-key`; revoke it "
        "with `booking revoke-api-key <prefix>`",
    },
}

_AUTH_ERRORS: dict[int, dict[str, Any]] = {
    401: {"schema": Problem, "description": "Missing or invalid access token or API key"},
    403: {"schema": Problem, "description": "An access token of a user who is not an admin"},
    503: {"schema": Problem, "description": "PostgreSQL or Redis is unavailable"},
}


async def require_admin(request: web.Request) -> None:
    """An API key (`X-API-Key`, or `Authorization: Bearer bk_…`), else the web app's bearer check (same
    parsing, same AuthService) and the role. A request that sends `X-API-Key` is judged by it alone.
    No per-user rate limit here: it lives in Redis, and /jobs/health must still answer (503) when Redis
    is down."""
    token = bearer_token(request)
    presented = request.headers.get(API_KEY_HEADER)
    if presented is None and token is not None and looks_like_key(token):
        presented = token
    if presented is not None:
        request[CURRENT_API_KEY] = await request.app[API_KEYS].authenticate(presented)
        return
    if token is None:
        raise Unauthorized("missing bearer token")
    user = await request.app[AUTH].authenticate(token)
    request[CURRENT_USER] = user
    if not user.is_admin:
        raise Forbidden("admin role required")


@routes.get("/jobs/health")
@docs(
    tags=["jobs"],
    summary="Database and Redis checks of the job service (answers within 1 s)",
    security=SECURITY,
    responses={
        200: {"schema": HealthOut, "description": "All dependencies answer"},
        503: {"schema": HealthOut, "description": "A dependency is failing; `checks` names it"},
        **{k: v for k, v in _AUTH_ERRORS.items() if k != 503},
    },
)
async def jobs_health(request: web.Request) -> web.Response:
    await require_admin(request)
    return await health.health_response(request)


async def _metrics(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    redis = request.app[REDIS]

    # Every probe finishes before an error propagates: none outlives the request (or the app's engine).
    # Each is a few commands on known keys (no SCAN), and the pending count a bounded read of the
    # schedule's partial index (`count_pending`); the whole answer is still bounded by DB_TIMEOUT (a
    # frozen Redis gives 503, never a hang).
    async with asyncio.timeout(settings.db_timeout):
        results = await asyncio.gather(
            jobstats.read(redis, prefix=settings.redis_prefix),
            jobstats.queue_stats(redis, stream=stream_name(settings), group=group_name(settings)),
            Maintenance(request.app[DB]).pending_reminders(),
            webhook_stats.figures(redis, request.app[DB], prefix=settings.redis_prefix),
            return_exceptions=True,
        )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    snapshot, queue, in_database, webhooks = cast(
        tuple[jobstats.Snapshot, dict[str, Any], int, dict[str, Any]], tuple(results)
    )
    return {
        "queue": {
            "stream": queue["stream"],
            "length": queue["length"],
            "depth": queue["waiting"],
            "pending": queue["pending"]["count"],
        },
        "inFlight": queue["pending"]["count"],
        "scheduled": {"database": in_database},
        "counters": snapshot.counters,
        "lateness": snapshot.lateness,
        "recentFailures": snapshot.failures,
        "webhooks": webhooks,
    }


class _Snapshot:
    """A one-off collector: the metrics document as Prometheus families."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        data = self.data
        yield GaugeMetricFamily(
            "reminder_queue_depth",
            "Stream entries not yet read by the workers",
            value=data["queue"]["depth"] or 0,
        )
        yield GaugeMetricFamily(
            "reminder_queue_length", "Entries in the stream", value=data["queue"]["length"]
        )
        yield GaugeMetricFamily("reminder_in_flight", "Read but not acknowledged", value=data["inFlight"])
        scheduled = GaugeMetricFamily("reminders_scheduled", "Pending reminders", labels=["store"])
        for store, value in data["scheduled"].items():
            scheduled.add_metric([store], value)
        yield scheduled
        deliveries = CounterMetricFamily(
            "reminder_deliveries", "Reminder delivery attempts by outcome", labels=["outcome"]
        )
        for outcome, value in data["counters"].items():
            deliveries.add_metric([outcome], value)
        yield deliveries
        lateness = GaugeMetricFamily(
            "reminder_lateness_seconds", "Seconds after due of recent sends", labels=["quantile"]
        )
        for name, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
            if data["lateness"][name] is not None:
                lateness.add_metric([quantile], data["lateness"][name])
        yield lateness
        yield GaugeMetricFamily(
            "reminder_lateness_samples",
            "Samples behind the lateness quantiles",
            value=data["lateness"]["samples"],
        )
        yield from webhook_stats.metric_families(data["webhooks"])


def _wants_prometheus(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "prometheus"):
            raise ValidationFailed(
                "format must be json or prometheus", [FieldError("format", "json|prometheus")]
            )
        return fmt == "prometheus"
    accept = request.headers.get("Accept", "")
    return "text/plain" in accept and "application/json" not in accept


@routes.get("/jobs/metrics")
@docs(
    tags=["jobs"],
    summary="Reminder metrics: queue depth, in flight, scheduled, outcomes, lateness, recent failures; "
    "webhook deliveries",
    description="JSON by default; Prometheus text with `?format=prometheus` or `Accept: text/plain`.",
    security=SECURITY,
    parameters=[
        {
            "in": "query",
            "name": "format",
            "required": False,
            "schema": {"type": "string", "enum": ["json", "prometheus"]},
        }
    ],
    responses={
        200: {"description": "The metrics (JSON or Prometheus text)"},
        400: {"schema": Problem, "description": "Unknown format"},
        **_AUTH_ERRORS,
    },
)
async def jobs_metrics(request: web.Request) -> web.Response:
    await require_admin(request)
    prometheus = _wants_prometheus(request)
    data = await _metrics(request)
    if not prometheus:
        return json_response(data)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(data))
    response = web.Response(body=generate_latest(registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


@routes.get("/jobs/queue/stats")
@docs(
    tags=["jobs"],
    summary="The reminder stream: length, consumer groups, consumers with idle times, pending entries",
    security=SECURITY,
    responses={200: {"description": "Stream statistics"}, **_AUTH_ERRORS},
)
async def queue_stats(request: web.Request) -> web.Response:
    await require_admin(request)
    settings = request.app[SETTINGS]
    async with asyncio.timeout(settings.db_timeout):  # a frozen Redis: 503 after DB_TIMEOUT, not a hang
        stats = await jobstats.queue_stats(
            request.app[REDIS], stream=stream_name(settings), group=group_name(settings)
        )
    return json_response(stats)


def _not_bool(value: Any) -> None:
    if isinstance(value, bool):
        raise ValidationError("Not a valid integer.")


class CleanupRequest(Strict):
    notification_days = fields.Integer(
        strict=True,
        load_default=30,
        data_key="notificationDays",
        validate=[_not_bool, validate.Range(min=1, max=3650)],
        metadata={"description": "Delete notifications read more than this many days ago (default 30)"},
    )


_cleanup = CleanupRequest()


class CleanupOut(Schema):
    idempotency_keys = fields.Integer(required=True, data_key="idempotencyKeys")
    notifications = fields.Integer(required=True)
    refresh_tokens = fields.Integer(required=True, data_key="refreshTokens")
    refresh_families = fields.Integer(required=True, data_key="refreshFamilies")
    webhook_messages = fields.Integer(required=True, data_key="webhookMessages")


@routes.post("/jobs/cleanup")
@docs(
    tags=["jobs"],
    summary="Purge idempotency keys older than 24 h, old read notifications, expired refresh tokens and "
    "settled webhook messages older than 30 days",
    description="The JSON body is optional.",
    security=SECURITY,
    responses={
        200: {"schema": CleanupOut, "description": "How many rows each purge deleted"},
        400: {"schema": Problem, "description": "Invalid body"},
        415: {"schema": Problem, "description": "Body is not JSON"},
        **_AUTH_ERRORS,
    },
)
@request_schema(CleanupRequest, required=False)
async def cleanup(request: web.Request) -> web.Response:
    await require_admin(request)
    options: dict[str, Any] = {"notification_days": 30}
    if request.body_exists:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="request body must be application/json")
        options = validate_body(_cleanup, await read_json(request))
    now = datetime.now(UTC)
    purged = await Maintenance(request.app[DB]).cleanup(
        now=now, notification_days=options["notification_days"]
    )
    return json_response(
        {
            "idempotencyKeys": purged.idempotency_keys,
            "notifications": purged.notifications,
            "refreshTokens": purged.refresh_tokens,
            "refreshFamilies": purged.refresh_families,
            "webhookMessages": purged.webhook_messages,
        }
    )
