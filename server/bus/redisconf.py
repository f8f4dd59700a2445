"""How every process connects to Redis: bounded timeouts and one retry on a dropped connection.

`Redis.from_url` (and the pools taskiq-redis builds from a URL) get no retry at all in redis-py 8: the
`Redis()` constructor's default `Retry` is not passed to a pool built from a URL (redis/redis-py#3194).
After Redis restarts, every pooled connection is dead, and the first command on each failed with
"Connection closed by server" — a booking request answered 503 although Redis was back. One retry on
`ConnectionError` reconnects that connection and sends again. Timeouts are not retried: a Redis that
hangs would otherwise hold a request for twice the timeout.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from server.base.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for a connection pool (`Redis.from_url`, taskiq-redis brokers and sources)."""
    return {
        # Without timeouts a Redis that hangs would hang a booking request.
        "socket_connect_timeout": settings.db_timeout,
        "socket_timeout": settings.db_timeout,
        "retry": retry_once(),
    }


def retry_once() -> Retry:
    """One retry, at once, on a dropped connection only (a retried timeout would double the wait)."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def connect(settings: Settings, **extra: Any) -> Redis:
    return Redis.from_url(settings.redis_url, **client_options(settings), **extra)
