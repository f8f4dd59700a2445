"""The composition root: `create_app(settings)` wires resources, routes and middlewares."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from actors.auth import AuthService
from actors.security import TokenCodec
from handlers import auth, health, users
from server.keys import AUTH, ENGINE, LIMITER, METRICS, REDIS, SETTINGS
from server.metrics import Metrics
from server.middlewares import body_rules, cors, request_context
from server.openapi import setup_openapi
from server.ratelimit import RateLimiter
from server.settings import Settings
from storage.db import create_engine

log = logging.getLogger(__name__)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[ENGINE] = create_engine(
        settings.sqlalchemy_url, pool_size=settings.db_pool_size, timeout=settings.db_timeout
    )
    yield
    await app[ENGINE].dispose()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.db_timeout,
        socket_connect_timeout=settings.db_timeout,
        health_check_interval=30,
    )
    yield
    await app[REDIS].aclose()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    codec = TokenCodec(
        access_secret=settings.jwt_secret,
        refresh_secret=settings.refresh_secret,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
    )
    app[AUTH] = AuthService(app[ENGINE], codec)
    app[LIMITER] = RateLimiter(app[REDIS], prefix=settings.redis_prefix)
    if settings.admin_email and settings.admin_password:
        admin = await app[AUTH].ensure_admin(email=settings.admin_email, password=settings.admin_password)
        log.info("admin account ensured for user %s", admin.id)
    yield


def setup_routes(app: web.Application) -> None:
    app.add_routes(auth.routes)
    app.add_routes(users.routes)
    app.add_routes(health.routes)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, cors, body_rules],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([database_ctx, redis_ctx, services_ctx])
    setup_routes(app)
    setup_openapi(app)
    return app
