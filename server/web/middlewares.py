"""Request id, problem+json for every error, metrics, and for the API CORS and the body rules."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from server.web.keys import CURRENT_API_KEY, CURRENT_USER, METRICS, REQUEST_ID, SETTINGS
from server.web.logs import request_id_var
from server.web.problems import as_domain_error, from_domain, problem

log = logging.getLogger(__name__)
access_log = logging.getLogger("booking.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# `_body_rules` applies to these methods under this prefix; server/web/openapi.py documents 413/415 by the
# same rule.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
BODY_RULES_PREFIX = "/api/"
_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
    503: "unavailable",
}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id, timing, metrics, and the error → problem+json mapping."""
    return await _context(request, handler, api=False)


@web.middleware
async def api_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`request_context` with the API's own rules: CORS (its preflight, and its headers on every answer,
    problems included) and the body rules. One middleware, not three: aiohttp wraps each middleware in
    frames of its own on every request (docs/BENCHMARKS.md)."""
    return await _context(request, handler, api=True)


async def _context(request: web.Request, handler: Handler, *, api: bool) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    # 128 random bits as 32 hex digits, the shape of uuid4().hex without building a UUID per request.
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await _guarded(request, handler, request_id, api)
    finally:
        request_id_var.reset(token)
    elapsed = time.perf_counter() - started
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    request.app[METRICS].observe_request(request.method, route, response.status, elapsed)
    # The path only: query strings may carry tokens (WebSocket `?token=`), and logs must not. A route
    # whose path is the credential (a calendar feed's `/cal/{token}.ics`) is logged as its pattern.
    if access_log.isEnabledFor(logging.INFO):  # the line's parts cost, even when it is not written
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            route if "{token}" in route else request.path[:200],
            response.status,
            elapsed * 1000,
            extra={"request_id": request_id, "user_id": _caller(request)},
        )
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
        if api:
            _cors_headers(request, response)
    return response


def _caller(request: web.Request) -> str | None:
    """Who made the request, for the access line: a user id, or an API key's public prefix."""
    if CURRENT_USER in request:
        return str(request[CURRENT_USER].id)
    if CURRENT_API_KEY in request:
        return f"api-key:{request[CURRENT_API_KEY].prefix}"
    return None


async def _guarded(request: web.Request, handler: Handler, request_id: str, api: bool) -> web.StreamResponse:
    try:
        if api:
            preflight = _preflight(request)
            if preflight is not None:
                return preflight
            _body_rules(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = _STATUS_SLUGS.get(exc.status, "error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return problem(exc.status, slug, exc.reason, detail, request_id, headers or None)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = as_domain_error(exc)
        if error is not None:
            if error is not exc:
                log.warning("dependency unavailable: %s", type(exc).__name__)
            return from_domain(error, request_id)
        log.exception("unhandled error")
        return problem(500, "internal", "Internal server error", "unexpected error", request_id)


def _body_rules(request: web.Request) -> None:
    """JSON-only bodies and the size limit, checked before any handler reads the body."""
    if request.method in BODY_METHODS and request.path.startswith(BODY_RULES_PREFIX):
        limit = request.app[SETTINGS].max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        if (
            request.body_exists
            and request.content_type != "application/json"
            and not (
                request.content_type.startswith("application/") and request.content_type.endswith("+json")
            )
        ):
            raise web.HTTPUnsupportedMediaType(text="request body must be application/json")


def _permitted_origin(request: web.Request) -> str | None:
    """The request's Origin when CORS_ORIGINS allows it, else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = request.app[SETTINGS].cors_origins
    return origin if origin in allowed or "*" in allowed else None


def _preflight(request: web.Request) -> web.Response | None:
    """The answer to a CORS preflight from an allowed origin (its headers come with `_cors_headers`)."""
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and _permitted_origin(request) is not None
    ):
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, Idempotency-Key, If-Match, X-Request-ID"
        )
        response.headers["Access-Control-Max-Age"] = "600"
        return response
    return None


def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer to an allowed origin, problems included (a browser hides the body of an answer
    without them, so a client could not read why it was refused)."""
    origin = _permitted_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "ETag, Location, X-Request-ID, Retry-After"
        response.headers["Vary"] = "Origin"
