"""Shared handler plumbing: the current user, client address, JSON responses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.domain.errors import Forbidden, Unauthorized
from server.base.json import dumps, iso
from server.web.keys import AUTH, CURRENT_USER, LIMITER, SETTINGS
from storage.users import User


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_user(request: web.Request) -> User:
    """Authenticate the request and count it against the caller's per-user API limit."""
    if CURRENT_USER in request:
        return request[CURRENT_USER]
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing bearer token")
    user = await request.app[AUTH].authenticate(token)
    await count_api_call(request.app, user)
    request[CURRENT_USER] = user
    return user


async def count_api_call(app: web.Application, user: User) -> None:
    """The per-user API limit, one definition for REST and WebSocket commands: counted in batches
    (server/bus/ratelimit.py: bounded over-admission across processes), open when Redis is down (capacity
    protection; an outage of Redis must not take the API down, docs/FAULTS.md)."""
    settings = app[SETTINGS]
    await app[LIMITER].hit_batched(
        "api-user", str(user.id), limit=settings.api_rate_per_user, window=settings.api_rate_window
    )


async def require_admin(request: web.Request) -> User:
    """`require_user`, then the role: an admin-only route answers 403 before it looks at any input."""
    user = await require_user(request)
    if not user.is_admin:
        raise Forbidden("admin role required")
    return user


def client_ip(request: web.Request) -> str:
    """The address per-IP rate limits count against.

    With TRUST_PROXY, the right-most X-Forwarded-For entry: the one our proxy appended, the address it saw
    (ops/nginx/*.conf: `$proxy_add_x_forwarded_for`, and `X-Real-IP $remote_addr`, the same address).
    Entries to its left are whatever the client sent. X-Real-IP is not read, because a platform router
    that only appends X-Forwarded-For would pass a client's own X-Real-IP through untouched.
    """
    if request.app[SETTINGS].trust_proxy:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
        nearest = forwarded.rpartition(",")[2].strip()
        if nearest:
            return nearest[:64]
    return request.remote or "unknown"


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "status": user.status,
        "timeZone": user.time_zone,
        "createdAt": iso(user.created_at),
        "updatedAt": iso(user.updated_at),
    }


def page_meta(*, total: int, page: int, limit: int) -> dict[str, int]:
    return {"total": total, "page": page, "limit": limit, "totalPages": (total + limit - 1) // limit}
