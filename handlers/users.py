"""/api/users: admin-only user administration."""

from __future__ import annotations

import uuid

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema

from actors.domain.errors import NotFound, ValidationFailed
from handlers.auth_schemas import UserOut, UserPage, UserPatch
from handlers.common import json_response, page_meta, require_admin, user_json
from handlers.docparts import (
    ADMIN_ERRORS,
)
from handlers.schemas import PageQuery, Problem
from handlers.validation import body, query
from server.web.keys import AUTH

routes = web.RouteTableDef()

_page = PageQuery()
_patch = UserPatch()


def path_uuid(request: web.Request, name: str = "id") -> uuid.UUID:
    """A path id that is not a UUID cannot name anything: 404, like any unknown id."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"no resource with id {request.match_info[name][:64]!r}") from None


@routes.get("/api/users")
@docs(
    tags=["users"],
    summary="List users (admin)",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": UserPage, "description": "A page of users"},
        400: {"schema": Problem, "description": "Invalid query"},
        **ADMIN_ERRORS,
    },
)
@querystring_schema(PageQuery)
async def list_users(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    params = query(request, _page)
    found, total = await request.app[AUTH].list_users(actor, page=params["page"], limit=params["limit"])
    return json_response(
        {
            "data": [user_json(u) for u in found],
            "meta": page_meta(total=total, page=params["page"], limit=params["limit"]),
        }
    )


@routes.patch("/api/users/{id}")
@docs(
    tags=["users"],
    summary="Change a user's role or status (admin); suspending revokes their refresh tokens",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": UserOut, "description": "The updated user"},
        400: {"schema": Problem, "description": "Invalid input"},
        404: {"schema": Problem, "description": "No such user"},
        409: {"schema": Problem, "description": "An admin cannot demote or suspend themselves"},
        **ADMIN_ERRORS,
    },
)
@request_schema(UserPatch)
async def patch_user(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    user_id = path_uuid(request)
    data = await body(request, _patch)
    if not data:
        raise ValidationFailed("nothing to change: give role and/or status")
    user = await request.app[AUTH].update_user(
        actor, user_id, role=data.get("role"), status=data.get("status")
    )
    return json_response(user_json(user))
