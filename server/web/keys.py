"""Typed keys for everything stored on the app and on requests (no string keys)."""

from __future__ import annotations

import uuid
from weakref import WeakSet

from aiohttp import web
from redis.asyncio import Redis

from actors.base import Registry
from actors.hub import Hub
from actors.reminders import NotificationService
from actors.services.api_keys import ApiKeyService
from actors.services.auth import AuthService
from actors.services.availability import AvailabilityService
from actors.services.bookings import BookingService
from actors.services.calendar_feeds import CalendarFeedService
from actors.services.resources import ResourceService
from actors.services.webhooks import WebhookService
from server.base.settings import Settings
from server.bus.events import EventBus
from server.bus.ratelimit import RateLimiter
from server.bus.redisgate import RedisGate
from server.web.metrics import Metrics
from storage.api_keys import ApiKey
from storage.db import Database
from storage.users import User

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
REDIS = web.AppKey("redis", Redis)
REDIS_GATE = web.AppKey("redis_gate", RedisGate)  # every request-path Redis call goes through it
AUTH = web.AppKey("auth", AuthService)
API_KEYS = web.AppKey("api_keys", ApiKeyService)  # the job service only: /api/ takes no API keys
LIMITER = web.AppKey("limiter", RateLimiter)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", Registry[uuid.UUID])
BUS = web.AppKey("bus", EventBus)  # the hub's relay to the other processes
HUB = web.AppKey("hub", Hub)  # this process's event hub: actors publish, sockets subscribe
BOOKINGS = web.AppKey("bookings", BookingService)
RESOURCES = web.AppKey("resources", ResourceService)
AVAILABILITY = web.AppKey("availability", AvailabilityService)  # hours, slots, next, free/busy
RESOURCE_REGISTRY = web.AppKey("resource_registry", Registry[uuid.UUID])  # one actor per booked resource
NOTIFICATIONS = web.AppKey("notifications", NotificationService)
WEBHOOKS = web.AppKey("webhooks", WebhookService)
CALENDAR_FEEDS = web.AppKey("calendar_feeds", CalendarFeedService)  # /api/calendar/feeds and /cal/
# Every open socket, so shutdown can close them with 1001; weak, so a finished socket needs no removal.
WEBSOCKETS = web.AppKey("websockets", WeakSet[web.WebSocketResponse])

REQUEST_ID = web.RequestKey("request_id", str)
CURRENT_USER = web.RequestKey("current_user", User)
CURRENT_API_KEY = web.RequestKey("current_api_key", ApiKey)
