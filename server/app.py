"""The composition root: `create_app(settings)` wires resources, routes and middlewares."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from aiohttp import web

from actors.base import Registry
from actors.bookings import actor_factory
from actors.hub import Hub
from actors.ports import Deps, Rules
from actors.reminders import NotificationService, Reminders
from actors.resources import ResourceBookings, resource_actor_factory
from actors.services.auth import AuthService
from actors.services.availability import AvailabilityService
from actors.services.bookings import BookingService
from actors.services.calendar_feeds import CalendarFeedService
from actors.services.resources import ResourceService
from actors.services.security import TokenCodec
from actors.services.usercache import UserCache
from actors.services.webhooks import WebhookService
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
from server.base.settings import Settings
from server.bus import redisconf
from server.bus.events import EventBus
from server.bus.ratelimit import RateLimiter
from server.bus.redisgate import GatedKick, RedisGate
from server.web.keys import (
    AUTH,
    AVAILABILITY,
    BOOKINGS,
    BUS,
    CALENDAR_FEEDS,
    DB,
    HUB,
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
from server.web.metrics import Metrics
from server.web.middlewares import api_context
from server.web.openapi import setup_openapi
from server.worker import webhook_delivery
from server.worker.broker import DirectEnqueue, make_broker
from storage.db import Database
from storage.users import User, get_user

# The task queue's two ends in the web process (only this composition root wires them).
REMINDER_KICK = web.AppKey("reminder_kick", DirectEnqueue)  # reminders already due, to the task queue
HAND_OFF = web.AppKey("hand_off", webhook_delivery.HandOff)  # webhook deliveries, to the task queue

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
    app[LIMITER] = RateLimiter(
        app[REDIS],
        prefix=settings.redis_prefix,
        gate=app[REDIS_GATE],
        batch=settings.api_rate_batch,
        flush=settings.api_rate_flush,
    )
    app[CALENDAR_FEEDS] = CalendarFeedService(app[DB])
    if settings.admin_email and settings.admin_password:
        admin = await app[AUTH].ensure_admin(email=settings.admin_email, password=settings.admin_password)
        log.info("admin account ensured for user %s", admin.id)
    yield


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    """The cross-process event bus; user-changed signals and reconnects reach the auth cache."""
    settings = app[SETTINGS]
    app[BUS] = bus = EventBus(app[REDIS], prefix=settings.redis_prefix, gate=app[REDIS_GATE])
    cache = app[AUTH].cache
    if cache is not None:
        bus.on_signal(USER_CHANGED, lambda data: cache.drop(uuid.UUID(data)))
        bus.on_reconnect(cache.clear)
    yield
    await bus.close()  # the listener; the hub (closed already) hears nothing more


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """This process's event hub: actors publish to it, sockets subscribe to it, the bus relays both
    ways (what the hub publishes goes out, what other processes publish comes in)."""
    app[HUB] = hub = Hub(app[BUS])
    app[BUS].start(hub)
    yield
    hub.close()


async def task_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """The taskiq stream: webhook deliveries, and reminders already due (PostgreSQL holds both; a
    reminder due later is enqueued by the scheduler from its row)."""
    task_broker = make_broker(app[SETTINGS])
    app[REMINDER_KICK] = DirectEnqueue(task_broker)
    app[HAND_OFF] = webhook_delivery.HandOff(webhook_delivery.kicker(task_broker), app[REDIS_GATE], app[DB])
    yield
    await task_broker.connection_pool.disconnect()


async def actors_ctx(app: web.Application) -> AsyncIterator[None]:
    """The actor registries and the services over them; shutdown drains the mailboxes."""
    settings = app[SETTINGS]
    hub, hand_off = app[HUB], app[HAND_OFF]
    deps = Deps(
        db=app[DB],
        emitter=hub,
        rules=Rules(
            max_duration=timedelta(days=settings.max_booking_days),
            max_advance=timedelta(days=settings.max_advance_days),
            default_reminder_minutes=settings.default_reminder_minutes,
        ),
        reminders=Reminders(
            GatedKick(app[REMINDER_KICK], app[REDIS_GATE]),
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
    resource_registry: Registry[uuid.UUID] = Registry(
        resource_actor_factory(deps, hub),
        mailbox_size=settings.actor_mailbox_size,
        idle_timeout=settings.actor_idle_seconds,
        kind="resource",
    )
    app[RESOURCE_REGISTRY] = resource_registry
    deps.resources = ResourceBookings(resource_registry, hub, lambda: deps)
    deps.users = _user_lookup(app)
    app[BOOKINGS] = BookingService(deps, registry)
    app[RESOURCES] = ResourceService(deps)
    app[AVAILABILITY] = AvailabilityService(deps, hub)
    app[NOTIFICATIONS] = NotificationService(app[DB])
    app[WEBHOOKS] = WebhookService(app[DB], production=settings.production, kick=hand_off.after_commit)
    metrics = app[METRICS]
    metrics.actors.set_function(lambda: len(registry) + len(resource_registry))
    metrics.mailbox_depth.set_function(lambda: registry.mailbox_depth + resource_registry.mailbox_depth)
    yield
    await registry.close()  # the user actors first: they may still be waiting on resource actors
    await resource_registry.close()


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
        middlewares=[api_context],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    # One context per resource, in dependency order; cleanup runs them backwards.
    app.cleanup_ctx.extend(
        [database_ctx, redis_ctx, services_ctx, bus_ctx, hub_ctx, task_queue_ctx, actors_ctx]
    )
    setup_routes(app)
    setup_openapi(app)
    return app
