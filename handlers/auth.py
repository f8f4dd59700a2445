"""/api/auth: register, login, refresh, logout, me."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, request_schema

from actors.services.auth import Session
from handlers.auth_schemas import LoginRequest, MePatch, RefreshRequest, RegisterRequest, SessionOut, UserOut
from handlers.common import client_ip, json_response, require_user, user_json
from handlers.docparts import AUTH_ERRORS, BODY_ERRORS
from handlers.schemas import Problem
from handlers.validation import body
from server.web.keys import AUTH, LIMITER, SETTINGS

routes = web.RouteTableDef()

_register = RegisterRequest()
_login = LoginRequest()
_refresh = RefreshRequest()
_me_patch = MePatch()


def _session_json(session: Session) -> dict[str, Any]:
    return {
        "user": user_json(session.user),
        "accessToken": session.access_token,
        "refreshToken": session.refresh_token,
        "tokenType": "Bearer",
        "expiresIn": session.expires_in,
    }


async def _limit_ip(request: web.Request, scope: str) -> None:
    settings = request.app[SETTINGS]
    await request.app[LIMITER].hit(
        f"{scope}-ip",
        client_ip(request),
        limit=settings.auth_rate_per_ip,
        window=settings.auth_rate_window,
        when_down="local",  # brute force stays refused while Redis is down (docs/FAULTS.md)
    )


async def _limit_email(request: web.Request, scope: str, email: str) -> None:
    settings = request.app[SETTINGS]
    await request.app[LIMITER].hit(
        f"{scope}-email",
        email.lower(),
        limit=settings.auth_rate_per_email,
        window=settings.auth_rate_window,
        when_down="local",
    )


@routes.post("/api/auth/register")
@docs(
    tags=["auth"],
    summary="Create an account (role user) and return a token pair",
    responses={
        201: {"schema": SessionOut, "description": "Registered"},
        400: {"schema": Problem, "description": "Invalid input"},
        409: {"schema": Problem, "description": "Email already registered"},
        415: {"schema": Problem, "description": "Body is not JSON"},
        429: {"schema": Problem, "description": "Rate limited"},
    },
)
@request_schema(RegisterRequest)
async def register(request: web.Request) -> web.Response:
    await _limit_ip(request, "register")
    data = await body(request, _register)
    await _limit_email(request, "register", data["email"])
    session = await request.app[AUTH].register(
        email=data["email"], password=data["password"], name=data["name"]
    )
    return json_response(_session_json(session), status=201)


@routes.post("/api/auth/login")
@docs(
    tags=["auth"],
    summary="Log in with email and password",
    responses={
        200: {"schema": SessionOut, "description": "Logged in"},
        400: {"schema": Problem, "description": "Invalid input"},
        401: {"schema": Problem, "description": "Unknown email or wrong password (same answer)"},
        429: {"schema": Problem, "description": "Rate limited"},
    },
)
@request_schema(LoginRequest)
async def login(request: web.Request) -> web.Response:
    await _limit_ip(request, "login")
    data = await body(request, _login)
    await _limit_email(request, "login", data["email"])
    session = await request.app[AUTH].login(email=data["email"], password=data["password"])
    return json_response(_session_json(session))


@routes.post("/api/auth/refresh")
@docs(
    tags=["auth"],
    summary="Exchange a refresh token for a new pair (single use; reuse revokes the family)",
    responses={
        200: {"schema": SessionOut, "description": "New token pair"},
        400: {"schema": Problem, "description": "Invalid input"},
        401: {"schema": Problem, "description": "Invalid, expired, reused or revoked refresh token"},
    },
)
@request_schema(RefreshRequest)
async def refresh(request: web.Request) -> web.Response:
    data = await body(request, _refresh)
    session = await request.app[AUTH].refresh(data["refresh_token"])
    return json_response(_session_json(session))


@routes.post("/api/auth/logout")
@docs(
    tags=["auth"],
    summary="Revoke the refresh token's whole family",
    responses={
        204: {"description": "Logged out"},
        400: {"schema": Problem, "description": "Invalid input"},
        401: {"schema": Problem, "description": "Invalid refresh token"},
    },
)
@request_schema(RefreshRequest)
async def logout(request: web.Request) -> web.Response:
    data = await body(request, _refresh)
    await request.app[AUTH].logout(data["refresh_token"])
    return web.Response(status=204)


@routes.get("/api/auth/me")
@docs(
    tags=["auth"],
    summary="The current user",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": UserOut, "description": "The user"},
        401: {"schema": Problem, "description": "Missing or invalid access token"},
        429: {"schema": Problem, "description": "Rate limited"},
    },
)
async def me(request: web.Request) -> web.Response:
    user = await require_user(request)
    return json_response(user_json(user))


@routes.patch("/api/auth/me")
@docs(
    tags=["auth"],
    summary="Change your own name and time zone",
    description="`timeZone` is an IANA name (zoneinfo's list); it becomes the default zone of the "
    "localStart/localEnd labels of /api/availability/slots and /next. Every web process uses it from "
    "the next request on.",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": UserOut, "description": "The user, changed"},
        400: {
            "schema": Problem,
            "description": "Unknown zone, wrong type, unknown field or nothing to change",
        },
        **BODY_ERRORS,
        **AUTH_ERRORS,
    },
)
@request_schema(MePatch)
async def patch_me(request: web.Request) -> web.Response:
    user = await require_user(request)
    data = await body(request, _me_patch)
    changed = await request.app[AUTH].update_profile(
        user, name=data.get("name"), time_zone=data.get("time_zone")
    )
    return json_response(user_json(changed))
