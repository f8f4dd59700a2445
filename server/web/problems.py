"""The one mapping of errors to answers: domain errors and failing dependencies to an HTTP status, a
problem type and a title. REST answers with RFC 9457 problem+json (`from_domain`), WebSocket with an
`error` frame of the same status and detail (handlers/ws_protocol.py: `domain_error`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    IdempotencyMismatch,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from server.base.json import dumps
from storage.errors import sqlstate

PROBLEM_TYPE_BASE = "urn:booking:problem:"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Kind:
    status: int
    slug: str
    title: str


BAD_REQUEST = Kind(400, "bad-request", "Bad request")
# The most specific class of an error in this table decides its answer (a subclass inherits it).
KINDS: dict[type[DomainError], Kind] = {
    DomainError: BAD_REQUEST,
    ValidationFailed: Kind(400, "validation-error", "Invalid input"),
    Unauthorized: Kind(401, "unauthorized", "Unauthorized"),
    Forbidden: Kind(403, "forbidden", "Forbidden"),
    NotFound: Kind(404, "not-found", "Not found"),
    Conflict: Kind(409, "conflict", "Conflict"),
    PreconditionFailed: Kind(412, "precondition-failed", "Precondition failed"),
    IdempotencyMismatch: Kind(422, "idempotency-key-reuse", "Idempotency key reused with another request"),
    RateLimited: Kind(429, "rate-limited", "Too many requests"),
    Unavailable: Kind(503, "unavailable", "Service unavailable"),
}
DEPENDENCY_DOWN = Unavailable("a backing service is unavailable; retry shortly")


def kind_of(error: DomainError) -> Kind:
    for cls in type(error).__mro__:
        kind = KINDS.get(cls)
        if kind is not None:
            return kind
    return BAD_REQUEST  # pragma: no cover (DomainError is in the table)


def details(error: DomainError) -> dict[str, Any]:
    """What the answer carries besides status and detail: the error's extras and its field errors."""
    extra = dict(error.extra)
    if isinstance(error, ValidationFailed):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    return extra


def is_dependency_failure(exc: BaseException) -> bool:
    """PostgreSQL or Redis unreachable, timing out, shutting down or full: 503, not 500."""
    if isinstance(
        exc,
        (
            asyncpg.ConnectionDoesNotExistError,
            ConnectionError,
            TimeoutError,  # pool acquire and command timeouts
            RedisConnectionError,
            RedisTimeoutError,
            OSError,
        ),
    ):
        return True
    if isinstance(exc, asyncpg.InterfaceError):  # the pool or connection closed under us; not misuse
        return "closed" in str(exc) or "closing" in str(exc)
    # 08: connection exception, 53: insufficient resources (too many connections),
    # 57: operator intervention (shutdown, cannot connect now).
    return (sqlstate(exc) or "")[:2] in {"08", "53", "57"}


def as_domain_error(exc: Exception) -> DomainError | None:
    """The domain error an exception answers as (a dependency down: Unavailable), or None: a 500."""
    if isinstance(exc, DomainError):
        return exc
    if is_dependency_failure(exc):
        return DEPENDENCY_DOWN
    return None


def problem_body(
    status: int, slug: str, title: str, detail: str, request_id: str, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "requestId": request_id,
    }
    body.update(extra)
    return body


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request_id: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = problem_body(status, slug, title, detail, request_id, **extra)
    return web.Response(status=status, text=dumps(body), content_type=CONTENT_TYPE, headers=headers)


def from_domain(error: DomainError, request_id: str) -> web.Response:
    kind = kind_of(error)
    headers: dict[str, str] = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    if kind.status == 503:
        headers["Retry-After"] = "1"
    if kind.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(
        kind.status, kind.slug, kind.title, error.detail, request_id, headers or None, **details(error)
    )
