"""Typed keys for everything stored on the app and on requests (no string keys)."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.auth import AuthService
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

REQUEST_ID = web.RequestKey("request_id", str)
CURRENT_USER = web.RequestKey("current_user", User)
