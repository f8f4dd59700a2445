"""RFC 9457 problem+json responses, the single error shape of the HTTP API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.errors import DomainError, RateLimited, ValidationFailed
from server.base.json import dumps

PROBLEM_TYPE_BASE = "urn:booking:problem:"
CONTENT_TYPE = "application/problem+json"


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
    extra = dict(error.extra)
    headers: dict[str, str] = {}
    if isinstance(error, ValidationFailed):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 503:
        headers["Retry-After"] = "1"
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(error.status, error.slug, error.title, error.detail, request_id, headers or None, **extra)
