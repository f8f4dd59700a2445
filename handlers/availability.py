"""Working hours, users' own availability, open slots, the next free slot and free/busy: thin handlers
over AvailabilityService (docs/AVAILABILITY.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema

from actors.domain.views import iso
from actors.domain.zones import check_zone
from actors.services.availability import (
    availability_view,
    hours_view,
    label_zone,
    parse_ids,
    slot_rules_view,
    span_view,
)
from handlers.availability_schemas import (
    AvailabilityOut,
    AvailabilityRequest,
    FreeBusyOut,
    FreeBusyQuery,
    HoursChangeOut,
    HoursOut,
    HoursRequest,
    NextOut,
    NextQuery,
    SlotsOut,
    SlotsQuery,
)
from handlers.common import json_response, require_admin, require_user
from handlers.docparts import (
    AUTH_ERRORS,
    BODY_ERRORS,
    ID_PARAM,
    WITH_ETAG,
    etag,
    if_match,
)
from handlers.preconditions import parse_if_match
from handlers.schemas import Problem
from handlers.users import path_uuid
from handlers.validation import body, query
from server.web.keys import AVAILABILITY

routes = web.RouteTableDef()

_hours_request = HoursRequest()
_availability_request = AvailabilityRequest()
_slots_query = SlotsQuery()
_next_query = NextQuery()
_freebusy_query = FreeBusyQuery()

_IF_MATCH = if_match("it")


# --- a resource's working hours ---------------------------------------------------------------------


@routes.get("/api/resources/{id}/hours")
@docs(
    tags=["availability"],
    summary="A resource's working hours, in its time zone (no rules: open around the clock)",
    security=[{"bearerAuth": []}],
    parameters=ID_PARAM,
    responses={
        200: {"schema": HoursOut, "description": "The hours; ETag is the resource's version", **WITH_ETAG},
        404: {"schema": Problem, "description": "No such resource"},
        **AUTH_ERRORS,
    },
)
async def get_hours(request: web.Request) -> web.Response:
    user = await require_user(request)
    resource = await request.app[AVAILABILITY].hours(user, path_uuid(request))
    return json_response(hours_view(resource), headers=etag(resource.version))


@routes.put("/api/resources/{id}/hours")
@docs(
    tags=["availability"],
    summary="Replace a resource's working hours (admin); existing bookings are never cancelled",
    description="The answer lists the active bookings ahead that the new hours leave outside, for the "
    "admin to sort out. The resource's version (its ETag) moves.",
    security=[{"bearerAuth": []}],
    parameters=[*ID_PARAM, _IF_MATCH],
    responses={
        200: {"schema": HoursChangeOut, "description": "The new hours", **WITH_ETAG},
        400: {"schema": Problem, "description": "Invalid hours (overlapping intervals, a bad time)"},
        403: {"schema": Problem, "description": "Admin role required"},
        404: {"schema": Problem, "description": "No such resource"},
        412: {"schema": Problem, "description": "If-Match is stale"},
        **BODY_ERRORS,
        **AUTH_ERRORS,
    },
)
@request_schema(HoursRequest)
async def put_hours(request: web.Request) -> web.Response:
    user = await require_admin(request)
    resource_id = path_uuid(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    data = await body(request, _hours_request)
    change = await request.app[AVAILABILITY].set_hours(
        user, resource_id, weekly=data["weekly"], overrides=data["overrides"], if_match=if_match
    )
    view = {
        **hours_view(change.resource),
        "outsideHours": [
            {"bookingId": str(i), "startTime": iso(s), "endTime": iso(e)} for i, s, e in change.outside
        ],
    }
    return json_response(view, headers=etag(change.resource.version))


# --- your own availability --------------------------------------------------------------------------


@routes.get("/api/users/me/availability")
@docs(
    tags=["availability"],
    summary="Your own weekly hours and time zone (used when others ask for your free/busy)",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": AvailabilityOut, "description": "Your availability", **WITH_ETAG},
        **AUTH_ERRORS,
    },
)
async def get_my_availability(request: web.Request) -> web.Response:
    user = await require_user(request)
    found = await request.app[AVAILABILITY].mine(user)
    return json_response(availability_view(found), headers=etag(found.version))


@routes.put("/api/users/me/availability")
@docs(
    tags=["availability"],
    summary="Set your own weekly hours and time zone",
    security=[{"bearerAuth": []}],
    parameters=[_IF_MATCH],
    responses={
        200: {"schema": AvailabilityOut, "description": "Saved", **WITH_ETAG},
        400: {"schema": Problem, "description": "Invalid hours or an unknown time zone"},
        412: {"schema": Problem, "description": "If-Match is stale"},
        **BODY_ERRORS,
        **AUTH_ERRORS,
    },
)
@request_schema(AvailabilityRequest)
async def put_my_availability(request: web.Request) -> web.Response:
    user = await require_user(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    data = await body(request, _availability_request)
    saved = await request.app[AVAILABILITY].set_mine(
        user, time_zone=data["time_zone"], weekly=data["weekly"], if_match=if_match
    )
    return json_response(availability_view(saved), headers=etag(saved.version))


# --- slots and the next free slot --------------------------------------------------------------------


def _grid(q: dict[str, Any]) -> tuple[timedelta, timedelta]:
    duration = timedelta(minutes=q["duration"])
    return duration, timedelta(minutes=q.get("step") or min(q["duration"], 1440))


@routes.get("/api/availability/slots")
@docs(
    tags=["availability"],
    summary="Open slots of a resource: hours, bookings (a seat free), buffers, notice and advance honoured",
    description="Each slot, posted back at once as a booking of the resource, is accepted unless someone "
    "took it in between (then 409). Your own bookings count as busy too (you cannot overlap yourself).",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": SlotsOut, "description": "Slots starting in [from, to), in order"},
        400: {"schema": Problem, "description": "Invalid query (the window spans at most 31 days)"},
        404: {"schema": Problem, "description": "No such resource"},
        409: {"schema": Problem, "description": "The resource is retired"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(SlotsQuery)
async def get_slots(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _slots_query)
    if q.get("time_zone"):
        check_zone(q["time_zone"])  # before any work
    duration, step = _grid(q)
    resource, found = await request.app[AVAILABILITY].slots(
        user, q["resource_id"], start=q["from_"], end=q["to"], duration=duration, step=step
    )
    zone = label_zone(q.get("time_zone"), user, resource)
    return json_response(
        {
            **slot_rules_view(resource, duration, step),
            "timeZone": zone.key,
            "data": [span_view(s, zone) for s in found],
        }
    )


@routes.get("/api/availability/next")
@docs(
    tags=["availability"],
    summary="The earliest open slot of a resource within its booking window, or null",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": NextOut, "description": "The slot, or null when none is open in the window"},
        400: {"schema": Problem, "description": "Invalid query"},
        404: {"schema": Problem, "description": "No such resource"},
        409: {"schema": Problem, "description": "The resource is retired"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(NextQuery)
async def get_next(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _next_query)
    if q.get("time_zone"):
        check_zone(q["time_zone"])  # before any work
    duration, step = _grid(q)
    service = request.app[AVAILABILITY]
    after = q.get("after") or service.deps.clock()
    resource, found = await service.next(user, q["resource_id"], after=after, duration=duration, step=step)
    zone = label_zone(q.get("time_zone"), user, resource)
    return json_response(
        {
            **slot_rules_view(resource, duration, step),
            "timeZone": zone.key,
            "slot": span_view(found, zone) if found else None,
        }
    )


@routes.get("/api/freebusy")
@docs(
    tags=["availability"],
    summary="Busy intervals of several resources and users at once (merged, no titles)",
    description="A resource is busy where no seat is free (buffers included) or it is closed; a user where "
    "they have an active booking or are outside their own hours. At most 50 ids and 31 days.",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": FreeBusyOut, "description": "Busy time per id, in the order asked"},
        400: {"schema": Problem, "description": "Invalid query"},
        404: {"schema": Problem, "description": "An id names no resource or user"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(FreeBusyQuery)
async def get_freebusy(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _freebusy_query)
    resource_ids = parse_ids(q.get("resource_ids"), "resourceIds")
    user_ids = parse_ids(q.get("user_ids"), "userIds")
    resources, users = await request.app[AVAILABILITY].freebusy(
        user, resource_ids=resource_ids, user_ids=user_ids, start=q["from_"], end=q["to"]
    )
    return json_response(
        {
            "resources": [
                {"id": str(i), "busy": [span_view(s) for s in spans]} for i, spans in resources.items()
            ],
            "users": [{"id": str(i), "busy": [span_view(s) for s in spans]} for i, spans in users.items()],
        }
    )
