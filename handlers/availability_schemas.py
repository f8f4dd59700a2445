"""Marshmallow schemas of working hours, users' own availability, open slots, the next free slot and
free/busy (handlers/availability.py)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from handlers.schemas import Instant, Strict

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
