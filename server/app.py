"""The composition root: `create_app(settings)` wires resources, routes and middlewares."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from aiohttp import web

from actors.auth import AuthService
from actors.availability_service import AvailabilityService
from actors.base import Event, Registry
from actors.bookings import BookingService, Deps, Rules, actor_factory
from actors.calendar_feeds import CalendarFeedService
from actors.reminders import NotificationService, Reminders
from actors.resources import ResourceBookings, ResourceService, resource_actor_factory
from actors.security import TokenCodec
from actors.usercache import UserCache
from actors.webhooks import WebhookService
from handlers import (
    auth,
    availability,
    bookings,
    calendar,
    health,
    notifications,
    resources,
    users,
    webhooks,
    ws,
)
from server import redisconf, webhook_delivery
from server.broker import DirectEnqueue, make_broker
from server.events import EventBus, make_event
from server.keys import (
    AUTH,
    AVAILABILITY,
    BOOKINGS,
    BUS,
    CALENDAR_FEEDS,
    DB,
    LIMITER,
    METRICS,
    NOTIFICATIONS,
    REDIS,
    REDIS_GATE,
    REGISTRY,
    RESOURCE_REGISTRY,
    RESOURCES,
    SETTINGS,
    WEBHOOKS,
)
from server.metrics import Metrics
from server.middlewares import body_rules, cors, request_context
from server.openapi import setup_openapi
from server.ratelimit import RateLimiter
from server.redisgate import GatedKick, RedisGate
from server.settings import Settings
from storage.db import Database
from storage.users import User, get_user

log = logging.getLogger(__name__)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[DB] = await Database.open(
        settings.database_url, pool_size=settings.db_pool_size, timeout=settings.db_timeout
    )
    yield
    await app[DB].close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = redisconf.connect(settings, health_check_interval=30)
    app[REDIS_GATE] = RedisGate(timeout=settings.redis_timeout, pause=settings.redis_skip_seconds)
    yield
    await app[REDIS].aclose()


def auth_service(
    settings: Settings,
    db: Database,
    *,
    cache: UserCache | None = None,
    announce: Callable[[uuid.UUID], Awaitable[None]] | None = None,
) -> AuthService:
    """The one way every process (web, jobs, CLI) builds token checking and issuing."""
    codec = TokenCodec(
        access_secret=settings.jwt_secret,
        refresh_secret=settings.refresh_secret,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
    )
    return AuthService(db, codec, cache=cache, announce=announce)


USER_CHANGED = (
    "user-changed"  # event-bus signal: a user's row changed (role, status, name, zone); data: the user id
)


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]

    async def announce(user_id: uuid.UUID) -> None:
        if BUS in app:  # at start-up (ADMIN_EMAIL) the bus is not there yet, and no peer cached anything
            await app[BUS].signal(USER_CHANGED, str(user_id))

    app[AUTH] = auth_service(
        settings, app[DB], cache=UserCache(ttl=settings.auth_cache_seconds), announce=announce
    )
    app[LIMITER] = RateLimiter(app[REDIS], prefix=settings.redis_prefix, gate=app[REDIS_GATE])
    app[CALENDAR_FEEDS] = CalendarFeedService(app[DB])
    if settings.admin_email and settings.admin_password:
        admin = await app[AUTH].ensure_admin(email=settings.admin_email, password=settings.admin_password)
        log.info("admin account ensured for user %s", admin.id)
    yield


async def actors_ctx(app: web.Application) -> AsyncIterator[None]:
    """Actor registry, the cross-process event bus and its listener; shutdown drains the mailboxes."""
    settings = app[SETTINGS]
    # Enqueues to the taskiq stream: webhook deliveries, and reminders already due (PostgreSQL holds
    # both; a reminder due later is enqueued by the scheduler from its row).
    task_broker = make_broker(settings)
    hand_off = webhook_delivery.HandOff(webhook_delivery.kicker(task_broker), app[REDIS_GATE], app[DB])
    deps = Deps(
        db=app[DB],
        emitter=_LateEmitter(app),
        rules=Rules(
            max_duration=timedelta(days=settings.max_booking_days),
            max_advance=timedelta(days=settings.max_advance_days),
            default_reminder_minutes=settings.default_reminder_minutes,
        ),
        make_event=make_event,
        reminders=Reminders(
            GatedKick(DirectEnqueue(task_broker), app[REDIS_GATE]),
            on_scheduled=app[METRICS].reminders_scheduled.inc,
        ),
        webhooks=hand_off,
    )
    registry: Registry[uuid.UUID] = Registry(
        actor_factory(deps),
        mailbox_size=settings.actor_mailbox_size,
        idle_timeout=settings.actor_idle_seconds,
    )
    app[REGISTRY] = registry
    # One actor per booked resource, behind the owners' actors (actors/resources.py: the lock order).
    resource_emitter = _LateEmitter(app)
    resource_registry: Registry[uuid.UUID] = Registry(
        resource_actor_factory(deps, resource_emitter),
        mailbox_size=settings.actor_mailbox_size,
        idle_timeout=settings.actor_idle_seconds,
        kind="resource",
    )
    app[RESOURCE_REGISTRY] = resource_registry
    deps.resources = ResourceBookings(resource_registry, resource_emitter, lambda: deps)
    deps.users = _user_lookup(app)
    app[BUS] = EventBus(
        app[REDIS],
        prefix=settings.redis_prefix,
        registry=registry,
        gate=app[REDIS_GATE],
        resources=resource_registry,
    )
    cache = app[AUTH].cache
    if cache is not None:
        app[BUS].on_signal(USER_CHANGED, lambda data: cache.drop(uuid.UUID(data)))
        app[BUS].on_reconnect(cache.clear)
    app[BOOKINGS] = BookingService(deps, registry)
    app[RESOURCES] = ResourceService(deps)
    app[AVAILABILITY] = AvailabilityService(deps, resource_emitter)
    app[NOTIFICATIONS] = NotificationService(app[DB])
    app[WEBHOOKS] = WebhookService(app[DB], production=settings.production, kick=hand_off.after_commit)
    metrics = app[METRICS]
    metrics.actors.set_function(lambda: len(registry) + len(resource_registry))
    metrics.mailbox_depth.set_function(lambda: registry.mailbox_depth + resource_registry.mailbox_depth)
    app[BUS].start()
    yield
    await registry.close()  # the user actors first: they may still be waiting on resource actors
    await resource_registry.close()
    await app[BUS].close()
    await task_broker.connection_pool.disconnect()


class _LateEmitter:
    """Resolves the bus at call time: the bus needs the registry, the registry's actors need an emitter."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def emit(self, user_id: uuid.UUID, event: Event) -> None:
        await self._app[BUS].emit(user_id, event)

    async def emit_resource(self, resource_id: uuid.UUID, event: Event) -> None:
        await self._app[BUS].emit_resource(resource_id, event)

    async def emit_all(
        self, to_users: list[tuple[uuid.UUID, Event]], to_resources: tuple[tuple[uuid.UUID, Event], ...]
    ) -> None:
        await self._app[BUS].emit_all(to_users, to_resources)


def _user_lookup(app: web.Application) -> Callable[[uuid.UUID], Awaitable[User | None]]:
    async def lookup(user_id: uuid.UUID) -> User | None:
        async with app[DB].connect() as conn:
            return await get_user(conn, user_id)

    return lookup


def setup_routes(app: web.Application) -> None:
    app.add_routes(auth.routes)
    app.add_routes(users.routes)
    app.add_routes(bookings.routes)
    app.add_routes(resources.routes)
    app.add_routes(availability.routes)
    app.add_routes(notifications.routes)
    app.add_routes(webhooks.routes)
    app.add_routes(calendar.routes)
    app.add_routes(health.routes)
    ws.setup(app)  # /ws/, its socket set, and the on_shutdown hook that closes sockets with 1001


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, cors, body_rules],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([database_ctx, redis_ctx, services_ctx, actors_ctx])
    setup_routes(app)
    setup_openapi(app)
    return app
