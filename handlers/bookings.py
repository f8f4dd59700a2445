"""/api/booking: thin handlers over BookingService (the WebSocket handler calls the same service)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema

from actors.domain.messages import SeriesWritten
from actors.domain.views import booking_view, snapshot_view
from handlers.booking_schemas import (
    AuditPage,
    BookingLimitQuery,
    BookingList,
    BookingListQuery,
    BookingOut,
    BookingPage,
    CreateBookingRequest,
    ScopeQuery,
    SeriesOut,
    StatusRequest,
    UpdateBookingRequest,
)
from handlers.common import json_response, page_meta, require_admin, require_user
from handlers.docparts import (
    AUTH_ERRORS,
    ID_PARAM,
    WITH_ETAG,
    etag,
    if_match,
)
from handlers.preconditions import idempotency_key, parse_if_match
from handlers.schemas import PageQuery, Problem
from handlers.users import path_uuid
from handlers.validation import body, query
from server.web.keys import BOOKINGS
from server.web.openapi import header

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.Response]]

_create = CreateBookingRequest()
_update_schema = UpdateBookingRequest()
_status = StatusRequest()
_list = BookingListQuery()
_limit = BookingLimitQuery()
_page = PageQuery()
_scope = ScopeQuery()
# A booking, or (with `recurrence`; scope=following|all) its series.
BOOKING_OR_SERIES = {"oneOf": [BookingOut, SeriesOut]}
_SCOPE_PARAM = {
    "in": "query",
    "name": "scope",
    "required": False,
    "schema": {"type": "string", "enum": ["this", "following", "all"], "default": "this"},
    "description": "For an occurrence: this one (If-Match: its version), or this and the following, or the"
    " whole series (If-Match: the series' version; the reply is the series)",
}

_IF_MATCH = if_match("the booking")


@routes.post("/api/booking")
@docs(
    tags=["bookings"],
    summary="Create a booking (never overlapping another active one of yours; within a resource's capacity)",
    security=[{"bearerAuth": []}],
    parameters=[
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"type": "string", "maxLength": 255},
            "description": "Retries with the same key and body return the first response",
        }
    ],
    responses={
        201: {
            "schema": BOOKING_OR_SERIES,
            "description": "Created (Location header points at it), or the replay of an earlier create; with"
            " `recurrence` the series and its occurrences (`skipped`: what conflictPolicy=skip left out)",
            "headers": {
                "ETag": header("ETag"),
                "Location": header("Location"),
                "Idempotent-Replayed": header("Idempotent-Replayed"),
            },
        },
        400: {"schema": Problem, "description": "Invalid input (also an unknown `resourceId` or `userId`)"},
        403: {"schema": Problem, "description": "`userId` of another user without the admin role"},
        409: {
            "schema": Problem,
            "description": "Overlaps an active booking (`conflictingId`), the resource is full"
            " (`resource full`, `conflictingIds`) or retired; for a series, `conflicts` lists each"
            " conflicting occurrence and the bookings it meets, and nothing is written",
        },
        413: {"schema": Problem, "description": "Body too large"},
        415: {"schema": Problem, "description": "Body is not JSON"},
        422: {"schema": Problem, "description": "Idempotency-Key reused with another body"},
        **AUTH_ERRORS,
    },
)
@request_schema(CreateBookingRequest)
async def create_booking(request: web.Request) -> web.Response:
    user = await require_user(request)
    key = idempotency_key(request.headers.get("Idempotency-Key"))
    data = await body(request, _create)
    created = await request.app[BOOKINGS].create(user, data, idempotency_key=key)
    if isinstance(created, SeriesWritten):
        view = created.view
        headers = {**etag(view["version"]), "Location": f"/api/series/{view['id']}"}
    else:
        view = created.booking
        headers = {**etag(view["version"]), "Location": f"/api/booking/{view['id']}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(view, status=201, headers=headers)


@routes.get("/api/booking")
@docs(
    tags=["bookings"],
    summary="List bookings by start time (yours; admins: `userId` or everyone's)",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": BookingPage, "description": "A page of bookings"},
        400: {"schema": Problem, "description": "Invalid query"},
        403: {"schema": Problem, "description": "`userId` of another user without the admin role"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(BookingListQuery)
async def list_bookings(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _list)
    found, total = await request.app[BOOKINGS].list_page(
        user,
        page=q["page"],
        limit=q["limit"],
        user_id=q.get("user_id"),
        start_from=q.get("from_"),
        start_to=q.get("to"),
        status=q.get("status"),
    )
    meta = page_meta(total=total, page=q["page"], limit=q["limit"])
    return json_response({"data": [booking_view(b) for b in found], "meta": meta})


def _short_list_doc(summary: str) -> Callable[[Handler], Handler]:
    decorator: Callable[[Handler], Handler] = docs(
        tags=["bookings"],
        summary=summary,
        security=[{"bearerAuth": []}],
        responses={
            200: {"schema": BookingList, "description": "Bookings"},
            400: {"schema": Problem, "description": "Invalid query"},
            403: {"schema": Problem, "description": "`userId` of another user without the admin role"},
            **AUTH_ERRORS,
        },
    )
    return decorator


@routes.get("/api/booking/upcoming")
@_short_list_doc("Active bookings that have not started, soonest first")
@querystring_schema(BookingLimitQuery)
async def upcoming(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _limit)
    found = await request.app[BOOKINGS].upcoming(user, limit=q["limit"], user_id=q.get("user_id"))
    return json_response({"data": [booking_view(b) for b in found]})


@routes.get("/api/booking/past")
@_short_list_doc("Bookings that have ended, latest first")
@querystring_schema(BookingLimitQuery)
async def past(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _limit)
    found = await request.app[BOOKINGS].past(user, limit=q["limit"], user_id=q.get("user_id"))
    return json_response({"data": [booking_view(b) for b in found]})


@routes.get("/api/booking/{id}")
@docs(
    tags=["bookings"],
    summary="One booking (ETag = its version)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": BookingOut, "description": "The booking", **WITH_ETAG},
        404: {"schema": Problem, "description": "Missing, or someone else's"},
        **AUTH_ERRORS,
    },
)
async def get_booking(request: web.Request) -> web.Response:
    user = await require_user(request)
    view = booking_view(await request.app[BOOKINGS].get(user, path_uuid(request)))
    return json_response(view, headers=etag(view["version"]))


_MUTATION_ERRORS: dict[int, dict[str, Any]] = {
    400: {"schema": Problem, "description": "Invalid input"},
    404: {"schema": Problem, "description": "Missing, or someone else's"},
    409: {"schema": Problem, "description": "Overlap, or a change a finished booking cannot take"},
    412: {"schema": Problem, "description": "If-Match is stale"},
    413: {"schema": Problem, "description": "Body too large"},
    415: {"schema": Problem, "description": "Body is not JSON"},
    **AUTH_ERRORS,
}


@routes.patch("/api/booking/{id}")
@docs(
    tags=["bookings"],
    summary="Change some fields (same rules as create); of an occurrence, or of its series with `scope`",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH, _SCOPE_PARAM],
    responses={
        200: {"schema": BOOKING_OR_SERIES, "description": "The updated booking (or series)", **WITH_ETAG},
        **_MUTATION_ERRORS,
    },
)
@request_schema(UpdateBookingRequest)
async def patch_booking(request: web.Request) -> web.Response:
    return await _update(request, _update_schema)


async def _update(request: web.Request, schema: Schema) -> web.Response:
    """PATCH of fields and PATCH of status: one path, differing only in what the body may hold."""
    user = await require_user(request)
    booking_id = path_uuid(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    scope = query(request, _scope)["scope"]
    changes = await body(request, schema)
    view = await request.app[BOOKINGS].update(user, booking_id, changes, if_match=if_match, scope=scope)
    return json_response(view, headers=etag(view["version"]))


@routes.patch("/api/booking/{id}/status")
@docs(
    tags=["bookings"],
    summary="Move a booking through scheduled → in-progress → completed, or cancel it",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH, _SCOPE_PARAM],
    responses={
        200: {"schema": BOOKING_OR_SERIES, "description": "The updated booking (or series)", **WITH_ETAG},
        **_MUTATION_ERRORS,
    },
)
@request_schema(StatusRequest)
async def patch_status(request: web.Request) -> web.Response:
    return await _update(request, _status)


@routes.delete("/api/booking/{id}")
@docs(
    tags=["bookings"],
    summary="Delete a booking (its reminder is cancelled; the audit log keeps it), or with `scope` a series",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH, _SCOPE_PARAM],
    responses={
        204: {"description": "Deleted"},
        400: {"schema": Problem, "description": "Invalid `scope` (or a scope on a booking of no series)"},
        404: {"schema": Problem, "description": "Missing, or someone else's"},
        412: {"schema": Problem, "description": "If-Match is stale"},
        **AUTH_ERRORS,
    },
)
async def delete_booking(request: web.Request) -> web.Response:
    user = await require_user(request)
    booking_id = path_uuid(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    scope = query(request, _scope)["scope"]
    await request.app[BOOKINGS].delete(user, booking_id, if_match=if_match, scope=scope)
    return web.Response(status=204)


@routes.get("/api/series/{id}")
@docs(
    tags=["bookings"],
    summary="A recurring series with its occurrences (ETag = its version, for scope=following|all)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": SeriesOut, "description": "The series", **WITH_ETAG},
        404: {"schema": Problem, "description": "Missing, or someone else's"},
        **AUTH_ERRORS,
    },
)
async def get_series(request: web.Request) -> web.Response:
    user = await require_user(request)
    view = await request.app[BOOKINGS].get_series(user, path_uuid(request))
    return json_response(view, headers=etag(view["version"]))


@routes.get("/api/booking/{id}/history")
@docs(
    tags=["bookings"],
    summary="Audit trail of a booking, deleted ones included (admin)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": AuditPage, "description": "Audit entries, oldest first"},
        400: {"schema": Problem, "description": "Invalid query"},
        403: {"schema": Problem, "description": "Admin role required"},
        404: {"schema": Problem, "description": "Not a booking id"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(PageQuery)
async def history(request: web.Request) -> web.Response:
    user = await require_admin(request)
    booking_id = path_uuid(request)
    q = query(request, _page)
    entries, total = await request.app[BOOKINGS].history(user, booking_id, page=q["page"], limit=q["limit"])
    data = [
        {
            "id": e["id"],
            "at": e["at"],
            "actorId": e["actor_id"],
            "action": e["action"],
            "entity": e["entity"],
            "entityId": e["entity_id"],
            "before": snapshot_view(e["before"]),
            "after": snapshot_view(e["after"]),
        }
        for e in entries
    ]
    return json_response({"data": data, "meta": page_meta(total=total, page=q["page"], limit=q["limit"])})
