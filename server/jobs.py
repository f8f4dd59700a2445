"""The job service's composition root: `create_jobs_app(settings)`, served by `booking jobs` on JOB_PORT.

Its own cleanup contexts (database → Redis → auth: access tokens and API keys), the web app's
request_context middleware (request ids, problem+json), and `/jobs/…` paths served as they are (nginx
strips nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_apigami.constants import SWAGGER_DICT

from actors.services.api_keys import ApiKeyService
from handlers import jobs
from server.app import auth_service, database_ctx, redis_ctx
from server.base.settings import Settings
from server.web.keys import API_KEYS, AUTH, DB, METRICS, SETTINGS
from server.web.metrics import Metrics
from server.web.middlewares import request_context
from server.web.openapi import setup_openapi

JOBS_OPENAPI_PATH = "/jobs/docs/openapi.json"

DESCRIPTION = """Operations on reminder delivery. Every endpoint needs an admin access token
(`Authorization: Bearer <accessToken>` from the web API's `/api/auth/login`) or an API key from
`booking create-api-key` (`X-API-Key: bk_…`, or `Authorization: Bearer bk_…`). API keys open the job
service only; the web API refuses them."""


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """Tokens are checked exactly as the web app checks them (same codec, same AuthService); API keys
    only here."""
    app[AUTH] = auth_service(app[SETTINGS], app[DB])
    app[API_KEYS] = ApiKeyService(app[DB])
    yield


def create_jobs_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()  # request_context counts requests here too
    app.cleanup_ctx.extend([database_ctx, redis_ctx, auth_ctx])
    app.add_routes(jobs.routes)
    setup_openapi(
        app,
        title="Booking job service",
        url=JOBS_OPENAPI_PATH,
        swagger_path=None,
        static_path="/jobs/docs/static",
        description=DESCRIPTION,
        security_schemes=jobs.SECURITY_SCHEMES,
    )

    async def optional_cleanup_body(app: web.Application) -> None:  # after setup_openapi's tidy step
        app[SWAGGER_DICT]["paths"]["/jobs/cleanup"]["post"]["requestBody"]["required"] = False

    app.on_startup.append(optional_cleanup_body)
    return app
