"""/api/resources: thin handlers over ResourceService (rooms, desks, people, equipment)."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema

from actors.domain.resources import resource_view
from handlers.common import json_response, page_meta, require_admin, require_user
from handlers.docparts import (
    ADMIN_ERRORS,
    AUTH_ERRORS,
    ID_PARAM,
    WITH_ETAG,
    etag,
    if_match,
)
from handlers.preconditions import parse_if_match
from handlers.resource_schemas import (
    BusyList,
    BusyQuery,
    CreateResourceRequest,
    ResourceListQuery,
    ResourceOut,
    ResourcePage,
    UpdateResourceRequest,
)
from handlers.schemas import Problem
from handlers.users import path_uuid
from handlers.validation import body, query
from server.web.keys import RESOURCES
from server.web.openapi import header

routes = web.RouteTableDef()

_create = CreateResourceRequest()
_update = UpdateResourceRequest()
_list = ResourceListQuery()
_busy = BusyQuery()

_IF_MATCH = if_match("the resource")


@routes.post("/api/resources")
@docs(
    tags=["resources"],
    summary="Create a resource (admin)",
    security=[{"bearerAuth": []}],
    responses={
        201: {
            "schema": ResourceOut,
            "description": "Created",
            "headers": {"ETag": header("ETag"), "Location": header("Location")},
        },
        400: {"schema": Problem, "description": "Invalid input (e.g. an unknown time zone)"},
        409: {"schema": Problem, "description": "An active resource already has this name"},
        413: {"schema": Problem, "description": "Body too large"},
        415: {"schema": Problem, "description": "Body is not JSON"},
        **ADMIN_ERRORS,
    },
)
@request_schema(CreateResourceRequest)
async def create_resource(request: web.Request) -> web.Response:
    user = await require_admin(request)
    data = await body(request, _create)
    view = resource_view(await request.app[RESOURCES].create(user, data))
    return json_response(
        view, status=201, headers={**etag(view["version"]), "Location": f"/api/resources/{view['id']}"}
    )


@routes.get("/api/resources")
@docs(
    tags=["resources"],
    summary="List resources by name (active ones; admins: `includeRetired`)",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": ResourcePage, "description": "A page of resources"},
        400: {"schema": Problem, "description": "Invalid query"},
        403: {"schema": Problem, "description": "`includeRetired` without the admin role"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(ResourceListQuery)
async def list_resources(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _list)
    found, total = await request.app[RESOURCES].list_page(
        user, page=q["page"], limit=q["limit"], include_retired=q["include_retired"]
    )
    meta = page_meta(total=total, page=q["page"], limit=q["limit"])
    return json_response({"data": [resource_view(r) for r in found], "meta": meta})


@routes.get("/api/resources/{id}")
@docs(
    tags=["resources"],
    summary="One resource (ETag = its version)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": ResourceOut, "description": "The resource", **WITH_ETAG},
        404: {"schema": Problem, "description": "No such resource"},
        **AUTH_ERRORS,
    },
)
async def get_resource(request: web.Request) -> web.Response:
    user = await require_user(request)
    view = resource_view(await request.app[RESOURCES].get(user, path_uuid(request)))
    return json_response(view, headers=etag(view["version"]))


@routes.patch("/api/resources/{id}")
@docs(
    tags=["resources"],
    summary="Change a resource (admin); capacity and buffers apply to bookings written afterwards",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH],
    responses={
        200: {"schema": ResourceOut, "description": "The updated resource", **WITH_ETAG},
        400: {"schema": Problem, "description": "Invalid input"},
        404: {"schema": Problem, "description": "No such resource"},
        409: {"schema": Problem, "description": "An active resource already has this name"},
        412: {"schema": Problem, "description": "If-Match is stale"},
        413: {"schema": Problem, "description": "Body too large"},
        415: {"schema": Problem, "description": "Body is not JSON"},
        **ADMIN_ERRORS,
    },
)
@request_schema(UpdateResourceRequest)
async def patch_resource(request: web.Request) -> web.Response:
    user = await require_admin(request)
    resource_id = path_uuid(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    changes = await body(request, _update)
    view = resource_view(await request.app[RESOURCES].update(user, resource_id, changes, if_match=if_match))
    return json_response(view, headers=etag(view["version"]))


@routes.delete("/api/resources/{id}")
@docs(
    tags=["resources"],
    summary="Retire a resource (admin): it takes no new bookings, its bookings stay",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH],
    responses={
        204: {"description": "Retired (or already retired)"},
        404: {"schema": Problem, "description": "No such resource"},
        412: {"schema": Problem, "description": "If-Match is stale"},
        **ADMIN_ERRORS,
    },
)
async def retire_resource(request: web.Request) -> web.Response:
    user = await require_admin(request)
    resource_id = path_uuid(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    await request.app[RESOURCES].retire(user, resource_id, if_match=if_match)
    return web.Response(status=204)


@routes.get("/api/resources/{id}/busy")
@docs(
    tags=["resources"],
    summary="When a resource is busy (buffers included); details only for your own bookings (admins: all)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": BusyList, "description": "Busy intervals that meet [from, to), by start"},
        400: {"schema": Problem, "description": "Invalid query (the window spans at most 31 days)"},
        404: {"schema": Problem, "description": "No such resource"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(BusyQuery)
async def busy(request: web.Request) -> web.Response:
    user = await require_user(request)
    resource_id = path_uuid(request)
    q = query(request, _busy)
    found = await request.app[RESOURCES].busy(user, resource_id, start=q["from_"], end=q["to"])
    return json_response({"data": found})
