"""Working hours, users' own availability, open slots, the next free slot and free/busy: thin handlers
over AvailabilityService (docs/AVAILABILITY.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from actors.availability_service import (
    availability_view,
    hours_view,
    label_zone,
    parse_ids,
    slot_rules_view,
    span_view,
)
from actors.views import iso
from actors.zones import check_zone
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
from handlers.schemas import Instant, Problem, Strict
from handlers.users import path_uuid
from handlers.validation import body, query
from server.web.keys import AVAILABILITY

routes = web.RouteTableDef()

_WALL = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
MAX_INTERVALS_A_DAY = 12
MAX_OVERRIDES = 366


def _desc(text: str, **extra: Any) -> dict[str, Any]:
    return {"description": text, **extra}


def _wall(text: str) -> fields.String:
    return fields.String(
        required=True,
        validate=validate.Regexp(_WALL, error="must be HH:MM (00:00-24:00)"),
        metadata=_desc(text),
    )


class _Interval(Strict):
    start = _wall("Local start, HH:MM")
    end = _wall("Local end, HH:MM; 24:00 is midnight at the end of the day")

    @validates_schema
    def _ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["end"] <= data["start"]:
            raise ValidationError("must be after start", "end")


class WeeklyInterval(_Interval):
    weekday = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=7),
        metadata=_desc("ISO weekday: 1 = Monday"),
    )


class DateOverride(Strict):
    date = fields.Date(required=True, metadata=_desc("A local date, YYYY-MM-DD"))
    intervals = fields.List(
        fields.Nested(_Interval),
        validate=validate.Length(max=MAX_INTERVALS_A_DAY),
        metadata=_desc("That day's hours instead of the weekly ones; [] closes the day"),
    )
    closed = fields.Boolean(metadata=_desc("true: closed all day (the same as intervals: [])"))

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("closed") and data.get("intervals"):
            raise ValidationError("a closed day has no intervals", "intervals")
        if not data.get("closed") and "intervals" not in data:
            raise ValidationError("give intervals, or closed: true", "intervals")

    @post_load
    def _stored(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {
            "date": data["date"].isoformat(),
            "intervals": [] if data.get("closed") else data["intervals"],
        }


class HoursRequest(Strict):
    weekly = fields.List(
        fields.Nested(WeeklyInterval),
        required=True,
        allow_none=True,
        validate=validate.Length(max=7 * MAX_INTERVALS_A_DAY),
        metadata=_desc("The weekly hours; a weekday with none is closed; null: open around the clock"),
    )
    overrides = fields.List(
        fields.Nested(DateOverride),
        load_default=list,
        validate=validate.Length(max=MAX_OVERRIDES),
        metadata=_desc("Dates whose hours differ (holidays), at most 366"),
    )


class AvailabilityRequest(Strict):
    time_zone = fields.String(required=True, data_key="timeZone", metadata=_desc("IANA time zone name"))
    weekly = fields.List(
        fields.Nested(WeeklyInterval),
        required=True,
        allow_none=True,
        validate=validate.Length(max=7 * MAX_INTERVALS_A_DAY),
        metadata=_desc("Your weekly hours; null: no hours (always available)"),
    )


class _IntervalOut(Schema):
    start = fields.String(required=True)
    end = fields.String(required=True)


class _WeeklyOut(_IntervalOut):
    weekday = fields.Integer(required=True)


class _OverrideOut(Schema):
    date = fields.String(required=True)
    intervals = fields.List(fields.Nested(_IntervalOut), required=True)


class HoursOut(Schema):
    resource_id = fields.UUID(required=True, data_key="resourceId")
    time_zone = fields.String(required=True, data_key="timeZone")
    weekly = fields.List(fields.Nested(_WeeklyOut), required=True, allow_none=True)
    overrides = fields.List(fields.Nested(_OverrideOut), required=True)
    version = fields.Integer(required=True, metadata=_desc("The resource's version (its ETag)"))
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class _Outside(Schema):
    booking_id = fields.UUID(required=True, data_key="bookingId")
    start_time = fields.DateTime(required=True, data_key="startTime")
    end_time = fields.DateTime(required=True, data_key="endTime")


class HoursChangeOut(HoursOut):
    outside_hours = fields.List(
        fields.Nested(_Outside),
        required=True,
        data_key="outsideHours",
        metadata=_desc("Active bookings ahead that the new hours leave outside (kept, not cancelled)"),
    )


class AvailabilityOut(Schema):
    user_id = fields.UUID(required=True, data_key="userId")
    time_zone = fields.String(required=True, data_key="timeZone")
    weekly = fields.List(fields.Nested(_WeeklyOut), required=True, allow_none=True)
    version = fields.Integer(required=True)
    updated_at = fields.DateTime(required=True, allow_none=True, data_key="updatedAt")


def _minutes(text: str, *, low: int, high: int, **kwargs: Any) -> fields.Integer:
    return fields.Integer(
        strict=False, validate=validate.Range(min=low, max=high), metadata=_desc(text), **kwargs
    )


class _SlotQueryBase(Strict):
    resource_id = fields.UUID(required=True, data_key="resourceId")
    duration = _minutes("Slot length in minutes", low=1, high=10080, required=True)
    step = _minutes(
        "Grid in minutes from local midnight (default: the duration, at most 1440)", low=1, high=1440
    )
    time_zone = fields.String(
        data_key="timeZone",
        metadata=_desc(
            "Zone for localStart/localEnd (default: your own timeZone, or the resource's while yours is UTC)"
        ),
    )


class SlotsQuery(_SlotQueryBase):
    from_ = Instant(format="iso", required=True, data_key="from", metadata=_desc("Earliest start"))
    to = Instant(
        format="iso", required=True, metadata=_desc("Starts before this (at most 31 days after from)")
    )


class NextQuery(_SlotQueryBase):
    after = Instant(format="iso", metadata=_desc("Earliest start (default: now)"))


class FreeBusyQuery(Strict):
    resource_ids = fields.String(data_key="resourceIds", metadata=_desc("Comma-separated resource ids"))
    user_ids = fields.String(data_key="userIds", metadata=_desc("Comma-separated user ids"))
    from_ = Instant(format="iso", required=True, data_key="from")
    to = Instant(format="iso", required=True, metadata=_desc("At most 31 days after from"))


class SlotOut(Schema):
    start = fields.DateTime(required=True)
    end = fields.DateTime(required=True)
    local_start = fields.String(required=True, data_key="localStart", metadata=_desc("start in timeZone"))
    local_end = fields.String(required=True, data_key="localEnd")


class SlotsOut(Schema):
    resource_id = fields.UUID(required=True, data_key="resourceId")
    time_zone = fields.String(required=True, data_key="timeZone")
    duration_minutes = fields.Integer(required=True, data_key="durationMinutes")
    step_minutes = fields.Integer(required=True, data_key="stepMinutes")
    data = fields.List(fields.Nested(SlotOut), required=True)


class NextOut(Schema):
    resource_id = fields.UUID(required=True, data_key="resourceId")
    time_zone = fields.String(required=True, data_key="timeZone")
    duration_minutes = fields.Integer(required=True, data_key="durationMinutes")
    step_minutes = fields.Integer(required=True, data_key="stepMinutes")
    slot = fields.Nested(SlotOut, required=True, allow_none=True, metadata=_desc("null: none in the window"))


class _Span(Schema):
    start = fields.DateTime(required=True)
    end = fields.DateTime(required=True)


class _BusyOf(Schema):
    id = fields.UUID(required=True)
    busy = fields.List(fields.Nested(_Span), required=True)


class FreeBusyOut(Schema):
    resources = fields.List(fields.Nested(_BusyOf), required=True)
    users = fields.List(fields.Nested(_BusyOf), required=True)


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
