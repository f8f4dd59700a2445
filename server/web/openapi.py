"""The OpenAPI 3 document (aiohttp-apigami) and Swagger UI at /api/, served locally."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import setup_aiohttp_apispec
from aiohttp_apigami.constants import SWAGGER_DICT

from server.base.version import VERSION
from server.web.middlewares import BODY_METHODS, BODY_RULES_PREFIX

OPENAPI_PATH = "/api/docs/openapi.json"
PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"

# Paths whose handlers reach PostgreSQL or Redis: request_context answers 503 there when one is down.
DEPENDENT_PREFIXES = ("/api/", "/jobs/")

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: yours when you sent a well-formed one, else generated. Also in "
        "the logs and in a problem's `requestId`",
        "schema": {"type": "string", "maxLength": 128},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {"description": "Always `Bearer`", "schema": {"type": "string"}},
    "ETag": {
        "description": 'The booking\'s version, quoted (`"3"`); send it back in `If-Match`',
        "schema": {"type": "string"},
    },
    "Location": {"description": "The path of the created resource", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response to an earlier request with the same "
        "Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def header(name: str) -> dict[str, str]:
    """A reference to one of HEADERS, for a response's `headers` in a `@docs` decorator."""
    if name not in HEADERS:
        raise KeyError(f"undocumented response header {name!r}: add it to server.web.openapi.HEADERS")
    return {"$ref": f"#/components/headers/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
    }


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    """The responses the middlewares give every operation they wrap, stated once here rather than
    repeated (and forgotten) in each handler's decorator; a decorator's own entry wins."""
    responses = {str(code): response for code, response in operation.get("responses", {}).items()}
    if method.upper() in BODY_METHODS and path.startswith(BODY_RULES_PREFIX):
        responses.setdefault("413", _problem("Body larger than MAX_BODY_BYTES"))
        responses.setdefault("415", _problem("Body is not `application/json`"))
    if path.startswith(DEPENDENT_PREFIXES):
        responses.setdefault("503", _problem("PostgreSQL or Redis is unavailable; retry after `Retry-After`"))
    for code, response in responses.items():
        headers = response.setdefault("headers", {})
        if code != "101":  # a WebSocket upgrade is answered before the middleware could add it
            headers.setdefault("X-Request-ID", header("X-Request-ID"))
        if code in ("429", "503"):
            headers.setdefault("Retry-After", header("Retry-After"))
        if code == "401":
            headers.setdefault("WWW-Authenticate", header("WWW-Authenticate"))
    operation["responses"] = responses


# OpenAPI links: how a response's ids feed other operations (clients and stateful test generators use
# them). (source path, method, status) → {link name: (target path, method, {parameter: expression})}.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/api/booking", "post", "201"): {
        name: (path, method, {"id": "$response.body#/id"})
        for name, path, method in (
            ("GetBooking", "/api/booking/{id}", "get"),
            ("UpdateBooking", "/api/booking/{id}", "patch"),
            ("ChangeStatus", "/api/booking/{id}/status", "patch"),
            ("DeleteBooking", "/api/booking/{id}", "delete"),
            ("BookingHistory", "/api/booking/{id}/history", "get"),
        )
    },
    ("/api/calendar/feeds", "post", "201"): {
        "RotateFeed": ("/api/calendar/feeds/{id}/rotate", "post", {"id": "$response.body#/id"}),
        "RevokeFeed": ("/api/calendar/feeds/{id}", "delete", {"id": "$response.body#/id"}),
    },
    ("/api/notifications", "get", "200"): {
        "MarkFirstRead": ("/api/notifications/{id}/read", "post", {"id": "$response.body#/data/0/id"}),
    },
}


def _link(document: dict[str, Any], path: str, method: str, parameters: dict[str, str]) -> dict[str, Any]:
    if method not in document.get("paths", {}).get(path, {}):
        raise KeyError(f"OpenAPI link to an undocumented operation: {method.upper()} {path}")
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


DESCRIPTION = """Bookings that never overlap, live over WebSocket (`/ws/`), with reminders.

Errors are `application/problem+json` (RFC 9457). Authenticate with `Authorization: Bearer <accessToken>`
from `/api/auth/login` or `/api/auth/register`."""


def _tidy(document: dict[str, Any]) -> None:
    """Complete each operation with the middlewares' responses and headers, and make apigami's output
    strict OpenAPI 3: it leaves Swagger-2 keys and optional bodies behind."""
    for path, operations in document.get("paths", {}).items():
        # aiohttp answers HEAD for every GET; the document lists the GET only (Swagger UI showed both).
        operations.pop("head", None)
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            _complete(path, method, operation)
            operation.pop("produces", None)
            operation.pop("consumes", None)
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                json_body = content.get("application/json")
                if json_body and json_body.get("schema", {}).get("$ref") == PROBLEM_SCHEMA_REF:
                    response["content"] = {"application/problem+json": json_body}
    for (path, method, status), links in LINKS.items():
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None:  # another app's document (the job service) has no such operation
            continue
        response = operation["responses"][status]
        response["links"] = {name: _link(document, *target) for name, target in links.items()}


BEARER_JWT = {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}


def setup_openapi(
    app: web.Application,
    *,
    title: str = "Booking API",
    url: str = OPENAPI_PATH,
    swagger_path: str | None = "/api/",
    static_path: str = "/api/docs/static",
    description: str = DESCRIPTION,
    security_schemes: dict[str, dict[str, Any]] | None = None,
) -> None:
    setup_aiohttp_apispec(
        app,
        title=title,
        version=VERSION,
        url=url,
        swagger_path=swagger_path,
        static_path=static_path,
        openapi_version="3.0.3",
        info={"description": description},
        components={
            "securitySchemes": security_schemes or BEARER_JWT,
            "headers": HEADERS,
        },
    )

    async def tidy(app: web.Application) -> None:
        _tidy(app[SWAGGER_DICT])

    app.on_startup.append(tidy)
