"""The OpenAPI 3 document (aiohttp-apigami) and Swagger UI at /api/, served locally."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import setup_aiohttp_apispec
from aiohttp_apigami.constants import SWAGGER_DICT

from server.version import VERSION

OPENAPI_PATH = "/api/docs/openapi.json"
PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"

DESCRIPTION = """Bookings that never overlap, live over WebSocket (`/ws/`), with reminders.

Errors are `application/problem+json` (RFC 9457). Authenticate with `Authorization: Bearer <accessToken>`
from `/api/auth/login` or `/api/auth/register`."""


def _tidy(document: dict[str, Any]) -> None:
    """Make apigami's output strict OpenAPI 3: it leaves Swagger-2 keys and optional bodies behind."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            operation.pop("produces", None)
            operation.pop("consumes", None)
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                json_body = content.get("application/json")
                if json_body and json_body.get("schema", {}).get("$ref") == PROBLEM_SCHEMA_REF:
                    response["content"] = {"application/problem+json": json_body}


def setup_openapi(
    app: web.Application,
    *,
    title: str = "Booking API",
    url: str = OPENAPI_PATH,
    swagger_path: str | None = "/api/",
    static_path: str = "/api/docs/static",
    description: str = DESCRIPTION,
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
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
    )

    async def tidy(app: web.Application) -> None:
        _tidy(app[SWAGGER_DICT])

    app.on_startup.append(tidy)
