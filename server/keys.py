"""Typed keys for everything stored on the app and on requests (no string keys)."""

from __future__ import annotations

import uuid

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.auth import AuthService
from actors.base import Registry
from actors.bookings import BookingService
from server.events import EventBus
from server.metrics import Metrics
from server.ratelimit import RateLimiter
from server.settings import Settings
from storage.users import User

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
REDIS = web.AppKey("redis", Redis)
AUTH = web.AppKey("auth", AuthService)
LIMITER = web.AppKey("limiter", RateLimiter)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", Registry[uuid.UUID])
BUS = web.AppKey("bus", EventBus)
BOOKINGS = web.AppKey("bookings", BookingService)

REQUEST_ID = web.RequestKey("request_id", str)
CURRENT_USER = web.RequestKey("current_user", User)
