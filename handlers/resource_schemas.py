"""Marshmallow schemas of resources: create, update, list, busy time (handlers/resources.py)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from handlers.schemas import _TEXT, PageMeta, PageQuery, Strict, _aware, _desc

# --- resources ----------------------------------------------------------------------------------


def _minutes(description: str, *, maximum: int, **kwargs: Any) -> fields.Integer:
    return fields.Integer(
        strict=True, validate=validate.Range(min=0, max=maximum), metadata=_desc(description), **kwargs
    )


class ResourceFields(Strict):
    name = fields.String(
        validate=validate.Length(min=1, max=255), metadata=_desc("Unique among active resources, any case")
    )
    description = fields.String(allow_none=True, validate=validate.Length(max=_TEXT))
    kind = fields.String(
        validate=validate.Length(min=1, max=100), metadata=_desc("Free text: room, desk, person...")
    )
    time_zone = fields.String(
        validate=validate.Length(min=1, max=64),
        data_key="timeZone",
        metadata=_desc("IANA name, e.g. Europe/Paris"),
    )
    capacity = fields.Integer(
        strict=True, validate=validate.Range(min=1, max=10_000), metadata=_desc("Bookings at once (1-10000)")
    )
    buffer_before_minutes = _minutes(
        "Unavailable before each booking", maximum=1440, data_key="bufferBeforeMinutes"
    )
    buffer_after_minutes = _minutes(
        "Unavailable after each booking", maximum=1440, data_key="bufferAfterMinutes"
    )
    min_notice_minutes = _minutes(
        "How soon before its start a booking may still be made", maximum=525_600, data_key="minNoticeMinutes"
    )
    max_advance_days = _minutes("How far ahead a booking may start", maximum=3650, data_key="maxAdvanceDays")


class CreateResourceRequest(ResourceFields):
    name = fields.String(
        required=True, validate=validate.Length(min=1, max=255), metadata={"example": "Room 1"}
    )
    kind = fields.String(load_default="room", validate=validate.Length(min=1, max=100))
    time_zone = fields.String(
        load_default="UTC", validate=validate.Length(min=1, max=64), data_key="timeZone"
    )
    capacity = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=10_000))


class UpdateResourceRequest(ResourceFields):
    active = fields.Boolean(metadata=_desc("false retires the resource; true brings it back"))


class ResourceOut(Schema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    description = fields.String(allow_none=True, required=True)
    kind = fields.String(required=True)
    time_zone = fields.String(required=True, data_key="timeZone")
    capacity = fields.Integer(required=True)
    buffer_before_minutes = fields.Integer(required=True, data_key="bufferBeforeMinutes")
    buffer_after_minutes = fields.Integer(required=True, data_key="bufferAfterMinutes")
    min_notice_minutes = fields.Integer(required=True, data_key="minNoticeMinutes")
    max_advance_days = fields.Integer(required=True, data_key="maxAdvanceDays")
    active = fields.Boolean(required=True)
    version = fields.Integer(required=True)
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class ResourcePage(Schema):
    data = fields.List(fields.Nested(ResourceOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


class ResourceListQuery(PageQuery):
    include_retired = fields.Boolean(
        load_default=False, data_key="includeRetired", metadata=_desc("Admins only: retired ones too")
    )


class BusyQuery(Strict):
    from_ = _aware("Start of the window", data_key="from", required=True)
    to = _aware("End of the window (at most 31 days after from)", required=True)


class BusyInterval(Schema):
    start = fields.DateTime(required=True, metadata=_desc("Busy from (the booking's start minus the buffer)"))
    end = fields.DateTime(required=True, metadata=_desc("Busy until (the booking's end plus the buffer)"))
    booking_id = fields.UUID(data_key="bookingId", metadata=_desc("Only for its owner and admins"))
    user_id = fields.UUID(data_key="userId", metadata=_desc("Only for its owner and admins"))
    title = fields.String(metadata=_desc("Only for its owner and admins"))
    start_time = fields.DateTime(data_key="startTime", metadata=_desc("Only for its owner and admins"))
    end_time = fields.DateTime(data_key="endTime", metadata=_desc("Only for its owner and admins"))


class BusyList(Schema):
    data = fields.List(fields.Nested(BusyInterval), required=True)
