"""/health and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from handlers.common import json_response
from handlers.schemas import HealthOut
from server.base.version import VERSION
from server.bus import jobstats
from server.web.keys import DB, METRICS, REDIS, SETTINGS
from server.web.metrics import exposition, reminder_delivery_families
from server.worker import webhook_stats

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


# Probes that timed out keep running (their clean-up may itself wait on the hung server); strong
# references until they end, so they are neither collected mid-flight nor awaited by the answer.
_abandoned: set[asyncio.Task[object]] = set()


def _forget(task: asyncio.Task[object]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


async def _check(probe: Coroutine[Any, Any, object], limit: float) -> str:
    """ "ok", "timeout" or "error: <type>" within `limit`, whatever the probe does.

    `wait_for` would also wait for the cancelled probe to finish: an asyncpg query cancelled against a
    frozen PostgreSQL releases its connection only after the pool's timeout (measured: /health took
    0.4 s + DB_TIMEOUT). The answer must not wait for that clean-up, so the probe is left to end on its own.
    """
    task = asyncio.ensure_future(probe)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return "timeout"
    exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
    if exc is not None:  # a health check reports every failure, it never raises
        return f"error: {type(exc).__name__}"
    return "ok"


async def _database(request: web.Request) -> None:
    async with request.app[DB].connect() as conn:
        await conn.execute("SELECT 1")


async def _redis(request: web.Request) -> None:
    await request.app[REDIS].ping()


@routes.get("/health")
@docs(
    tags=["operations"],
    summary="Liveness and dependency checks (answers within 1 s even when a dependency hangs)",
    responses={
        200: {"schema": HealthOut, "description": "All dependencies answer"},
        503: {"schema": HealthOut, "description": "A dependency is failing; `checks` names it"},
    },
)
async def health(request: web.Request) -> web.Response:
    return await health_response(request)


async def health_response(request: web.Request) -> web.Response:
    """The dependency checks of any app holding ENGINE, REDIS and SETTINGS (the job service too)."""
    timeout = request.app[SETTINGS].health_timeout
    database, redis = await asyncio.gather(
        _check(_database(request), timeout),
        _check(_redis(request), timeout),
    )
    healthy = database == "ok" and redis == "ok"
    return json_response(
        {
            "status": "ok" if healthy else "degraded",
            "checks": {"database": database, "redis": redis},
            "version": VERSION,
        },
        status=200 if healthy else 503,
    )


async def _reminder_deliveries(request: web.Request) -> bytes:
    """The workers' delivery figures from Redis; left out (never a failed scrape) when Redis does not
    answer within the health-check timeout."""
    settings = request.app[SETTINGS]
    try:
        snapshot = await asyncio.wait_for(
            jobstats.read(request.app[REDIS], prefix=settings.redis_prefix), settings.health_timeout
        )
    except Exception as exc:  # TimeoutError, RedisError, OSError: the process's own metrics still answer
        log.warning("/metrics without reminder deliveries: Redis did not answer (%s)", type(exc).__name__)
        return b""
    return exposition(reminder_delivery_families(snapshot))


async def _webhook_deliveries(request: web.Request) -> bytes:
    """The workers' webhook figures and the outbox depth; left out like the reminders' when Redis or
    the database does not answer within the health-check timeout."""
    settings = request.app[SETTINGS]
    try:
        data = await asyncio.wait_for(
            webhook_stats.figures(request.app[REDIS], request.app[DB], prefix=settings.redis_prefix),
            settings.health_timeout,
        )
    except Exception as exc:
        log.warning("/metrics without webhook deliveries (%s)", type(exc).__name__)
        return b""
    return exposition(webhook_stats.metric_families(data))


@routes.get("/metrics")
@docs(
    tags=["operations"],
    summary="Prometheus metrics: requests, actors, mailboxes, sockets, reminders scheduled / sent / "
    "lateness, webhooks sent / failed / retried / latency / queue depth",
    responses={200: {"description": "Prometheus text format"}},
)
async def metrics(request: web.Request) -> web.Response:
    payload = (
        generate_latest(request.app[METRICS].registry)
        + await _reminder_deliveries(request)
        + await _webhook_deliveries(request)
    )
    response = web.Response(body=payload)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
