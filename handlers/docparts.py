"""The parts every endpoint's OpenAPI declaration repeats, declared once: the error answers of the
auth and body middlewares, the `{id}` path parameter, `If-Match` and the `ETag` header."""

from __future__ import annotations

from typing import Any

from handlers.schemas import Problem
from server.web.openapi import header

AUTH_ERRORS: dict[int, dict[str, Any]] = {
    401: {"schema": Problem, "description": "Missing or invalid access token"},
    429: {"schema": Problem, "description": "Rate limited"},
}
ADMIN_ERRORS: dict[int, dict[str, Any]] = {
    403: {"schema": Problem, "description": "Admin role required"},
    **AUTH_ERRORS,
}
BODY_ERRORS: dict[int, dict[str, Any]] = {
    413: {"schema": Problem, "description": "Body too large"},
    415: {"schema": Problem, "description": "Body is not JSON"},
}
WITH_ETAG: dict[str, Any] = {"headers": {"ETag": header("ETag")}}
ID_PARAM: list[dict[str, Any]] = [
    {"in": "path", "name": "id", "required": True, "schema": {"type": "string", "format": "uuid"}}
]


def if_match(what: str) -> dict[str, Any]:
    """The optional If-Match header of a change to `what` (412 when stale)."""
    return {
        "in": "header",
        "name": "If-Match",
        "required": False,
        "schema": {"type": "string"},
        "description": f"ETag from a previous read; 412 when {what} changed since",
    }


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}
