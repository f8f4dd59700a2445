"""Typed settings, read once from the environment (and `.env` when present)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Environment = Literal["development", "production", "test"]

# Development defaults: good enough for a laptop, refused in production.
DEV_JWT_SECRET = "dev-only-access-secret-change-me-0123456789abcdef"  # noqa: S105
DEV_REFRESH_SECRET = "dev-only-refresh-secret-change-me-0123456789abcdef"  # noqa: S105
DEV_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEV_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_SECRET_BYTES = 32


class SettingsError(ValueError):
    """A variable is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    environment: Environment = "development"
    database_url: str = DEV_DATABASE_URL
    redis_url: str = DEV_REDIS_URL
    redis_prefix: str = "booking:"
    jwt_secret: str = DEV_JWT_SECRET
    refresh_secret: str = DEV_REFRESH_SECRET
    host: str = "0.0.0.0"  # noqa: S104  (a container / platform binds all interfaces)
    port: int = 5000
    job_port: int = 5001
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 256 * 1024
    max_booking_days: int = 7
    max_advance_days: int = 730
    default_reminder_minutes: int = 10
    actor_idle_seconds: float = 300.0
    actor_mailbox_size: int = 256
    auth_rate_per_ip: int = 30
    auth_rate_per_email: int = 10
    auth_rate_window: int = 60
    api_rate_per_user: int = 600
    api_rate_window: int = 60
    # The per-user API limit is counted here and added in Redis every `api_rate_batch` hits or
    # `api_rate_flush` seconds; each web process may admit up to `api_rate_batch` hits past the limit
    # per window (server/bus/ratelimit.py). 1: every hit asks Redis, exact across processes.
    api_rate_batch: int = 10
    api_rate_flush: float = 5.0
    # Unknown or revoked calendar feed tokens per client IP before 429 (docs/CALENDAR.md).
    feed_misses_per_ip: int = 30
    feed_miss_window: int = 600
    auth_cache_seconds: float = 5.0
    db_pool_size: int = 10
    db_timeout: float = 5.0
    health_timeout: float = 0.4
    # Request-path Redis calls (rate limits, event publish, reminder schedule, admin broadcast):
    # server/bus/redisgate.py.
    redis_timeout: float = 0.5
    redis_skip_seconds: float = 1.0
    trust_proxy: bool = False
    admin_email: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_json: bool = False
    # WebSocket limits (SPEC §6); see docs/WEBSOCKET.md.
    ws_max_frame_bytes: int = 64 * 1024
    ws_rate_per_second: float = 20.0
    ws_rate_burst: int = 40
    ws_rate_strikes: int = 10
    ws_outbox_size: int = 256
    ws_heartbeat_seconds: float = 30.0
    ws_auth_timeout: float = 10.0
    ws_allowed_origins: tuple[str, ...] = ()
    # Outbound webhooks; see docs/WEBHOOKS.md.
    webhook_timeout: float = 10.0
    webhook_retry_base: float = 5.0
    webhook_concurrency: int = 4
    webhook_poll_seconds: float = 1.0

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.database_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        if environ is None:
            for key, value in read_dotenv(Path(".env")).items():
                env.setdefault(key, value)
        return _build(env)


def to_sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise SettingsError("DATABASE_URL must start with postgresql:// (got another scheme)")


def read_dotenv(path: Path) -> dict[str, str]:
    """Minimal `.env` reader: KEY=VALUE lines, `#` comments, optional quotes."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _int(env: Mapping[str, str], name: str, default: int, *, low: int = 0, high: int = 2**31) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer (got {raw!r})") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high} (got {value})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number (got {raw!r})") from None
    if value < 0 or (value == 0 and not zero) or value != value or value == float("inf"):
        raise SettingsError(f"{name} must be {'zero or ' if zero else ''}positive and finite (got {raw!r})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false (got {raw!r})")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in env.get(name, "").split(",") if o.strip())


def _environment(env: Mapping[str, str]) -> Environment:
    raw = (env.get("NODE_ENV") or env.get("APP_ENV") or "development").strip().lower()
    if raw == "development":
        return "development"
    if raw == "production":
        return "production"
    if raw == "test":
        return "test"
    raise SettingsError(f"NODE_ENV must be development, production or test (got {raw!r})")


def _secret(env: Mapping[str, str], name: str, default: str, production: bool) -> str:
    value = env.get(name, "")
    if not production:
        return value or default
    if not value:
        raise SettingsError(f"{name} is required in production")
    if value in {DEV_JWT_SECRET, DEV_REFRESH_SECRET} or "change-me" in value or value.startswith("your-"):
        raise SettingsError(f"{name} is a default/example value; set a random secret in production")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{name} must be at least {MIN_SECRET_BYTES} bytes in production")
    return value


def _build(env: Mapping[str, str]) -> Settings:
    environment = _environment(env)
    production = environment == "production"
    database_url = env.get("DATABASE_URL") or ("" if production else DEV_DATABASE_URL)
    redis_url = env.get("REDIS_URL") or ("" if production else DEV_REDIS_URL)
    if not database_url:
        raise SettingsError("DATABASE_URL is required in production")
    if not redis_url:
        raise SettingsError("REDIS_URL is required in production")
    to_sqlalchemy_url(database_url)
    jwt_secret = _secret(env, "JWT_SECRET_KEY", DEV_JWT_SECRET, production)
    refresh_secret = _secret(env, "REFRESH_JWT_SECRET_KEY", DEV_REFRESH_SECRET, production)
    if production and jwt_secret == refresh_secret:
        raise SettingsError("REFRESH_JWT_SECRET_KEY must differ from JWT_SECRET_KEY")
    origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
    return Settings(
        environment=environment,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=env.get("REDIS_KEY_PREFIX", "booking:"),
        jwt_secret=jwt_secret,
        refresh_secret=refresh_secret,
        host=env.get("HOST", "0.0.0.0"),  # noqa: S104
        port=_int(env, "PORT", 5000, low=0, high=65535),
        job_port=_int(env, "JOB_PORT", 5001, low=0, high=65535),
        access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", 900, low=10, high=86400),
        refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", 30 * 24 * 3600, low=60),
        cors_origins=origins,
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 256 * 1024, low=1024, high=64 * 1024 * 1024),
        max_booking_days=_int(env, "MAX_BOOKING_DAYS", 7, low=1, high=366),
        max_advance_days=_int(env, "MAX_ADVANCE_DAYS", 730, low=1, high=36600),
        default_reminder_minutes=_int(env, "DEFAULT_REMINDER_MINUTES", 10, low=0, high=10080),
        actor_idle_seconds=_float(env, "ACTOR_IDLE_SECONDS", 300.0),
        actor_mailbox_size=_int(env, "ACTOR_MAILBOX_SIZE", 256, low=1, high=100_000),
        auth_rate_per_ip=_int(env, "AUTH_RATE_LIMIT_PER_IP", 30, low=1),
        auth_rate_per_email=_int(env, "AUTH_RATE_LIMIT_PER_EMAIL", 10, low=1),
        auth_rate_window=_int(env, "AUTH_RATE_LIMIT_WINDOW", 60, low=1, high=86400),
        api_rate_per_user=_int(env, "API_RATE_LIMIT_PER_USER", 600, low=1),
        api_rate_window=_int(env, "API_RATE_LIMIT_WINDOW", 60, low=1, high=86400),
        api_rate_batch=_int(env, "API_RATE_LIMIT_BATCH", 10, low=1, high=10_000),
        api_rate_flush=_float(env, "API_RATE_LIMIT_FLUSH_SECONDS", 5.0, zero=True),
        feed_misses_per_ip=_int(env, "CALENDAR_FEED_MISS_LIMIT_PER_IP", 30, low=1),
        feed_miss_window=_int(env, "CALENDAR_FEED_MISS_WINDOW", 600, low=1, high=86400),
        auth_cache_seconds=_float(env, "AUTH_CACHE_SECONDS", 5.0, zero=True),
        db_pool_size=_int(env, "DB_POOL_SIZE", 10, low=1, high=500),
        db_timeout=_float(env, "DB_TIMEOUT", 5.0),
        health_timeout=_float(env, "HEALTH_CHECK_TIMEOUT", 0.4),
        redis_timeout=_float(env, "REDIS_TIMEOUT", 0.5),
        redis_skip_seconds=_float(env, "REDIS_SKIP_SECONDS", 1.0, zero=True),
        trust_proxy=_bool(env, "TRUST_PROXY", False),
        admin_email=env.get("ADMIN_EMAIL") or None,
        admin_password=env.get("ADMIN_PASSWORD") or None,
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        log_json=_bool(env, "LOG_JSON", production),
        ws_max_frame_bytes=_int(env, "WS_MAX_FRAME_BYTES", 64 * 1024, low=1024, high=16 * 1024 * 1024),
        ws_rate_per_second=_float(env, "WS_RATE_PER_SECOND", 20.0),
        ws_rate_burst=_int(env, "WS_RATE_BURST", 40, low=1, high=100_000),
        ws_rate_strikes=_int(env, "WS_RATE_STRIKES", 10, low=1, high=100_000),
        ws_outbox_size=_int(env, "WS_OUTBOX_SIZE", 256, low=1, high=100_000),
        ws_heartbeat_seconds=_float(env, "WS_HEARTBEAT_SECONDS", 30.0),
        ws_auth_timeout=_float(env, "WS_AUTH_TIMEOUT", 10.0),
        # Unset means the CORS allow-list: a browser page allowed to call the API may open a socket.
        ws_allowed_origins=_origins(env, "WS_ALLOWED_ORIGINS") if "WS_ALLOWED_ORIGINS" in env else origins,
        webhook_timeout=_float(env, "WEBHOOK_TIMEOUT_SECONDS", 10.0),
        webhook_retry_base=_float(env, "WEBHOOK_RETRY_BASE_SECONDS", 5.0),
        webhook_concurrency=_int(env, "WEBHOOK_ENDPOINT_CONCURRENCY", 4, low=1, high=100),
        webhook_poll_seconds=_float(env, "WEBHOOK_POLL_SECONDS", 1.0),
    )
