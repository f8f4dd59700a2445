"""Marshmallow schemas of bookings and series: create, update, list, audit (handlers/bookings.py and the
WebSocket commands)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

from actors.domain.zones import ZONE_HINT, known_zones
from handlers.schemas import _TEXT, PageMeta, PageQuery, Strict, _aware, _desc

# --- bookings -----------------------------------------------------------------------------------

STATUSES = ["scheduled", "in-progress", "completed", "cancelled"]


def _example_slot(days_ahead: int = 30) -> tuple[str, str]:
    """10:00-11:00 UTC, `days_ahead` days after the process started: a body that Swagger UI's "Try it
    out" (and schemathesis' examples phase) can send as it stands for a month of uptime."""
    day = (datetime.now(UTC) + timedelta(days=days_ahead)).date()
    return f"{day}T10:00:00Z", f"{day}T11:00:00Z"


_EXAMPLE_START, _EXAMPLE_END = _example_slot()


MAX_ATTENDEES = 100


class Attendee(Strict):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    name = fields.String(allow_none=True, validate=validate.Length(max=255))

    @post_load
    def _shape(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {"email": data["email"], "name": data.get("name")}


def _attendees() -> fields.List:
    return fields.List(
        fields.Nested(Attendee),
        validate=validate.Length(max=MAX_ATTENDEES),
        metadata=_desc(f"At most {MAX_ATTENDEES}; stored and returned, no mail is sent"),
    )


def _resource_ref() -> fields.UUID:
    return fields.UUID(
        allow_none=True,
        data_key="resourceId",
        metadata=_desc("The resource booked (room, desk, person...); null or absent: a personal booking"),
    )


def _known_zone(value: str) -> bool:
    if value not in known_zones():
        raise ValidationError(ZONE_HINT)
    return True


class RecurrenceRequest(Strict):
    rrule = fields.String(
        required=True,
        validate=validate.Length(min=1, max=500),
        metadata=_desc(
            "RFC 5545 RRULE: FREQ=DAILY|WEEKLY|MONTHLY, INTERVAL, BYDAY, BYMONTHDAY, BYSETPOS, WKST and "
            "one of COUNT or UNTIL; at most 366 occurrences, all within the booking window",
            example="FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10",
        ),
    )
    time_zone = fields.String(
        validate=_known_zone,
        data_key="timeZone",
        metadata=_desc("IANA zone the rule repeats in (default: your own timeZone)", example="Europe/Berlin"),
    )
    exdates = fields.List(
        _aware("An occurrence's start to leave out"),
        validate=validate.Length(max=366),
        metadata=_desc("Occurrence starts to leave out (EXDATE), at most 366"),
    )


class CreateBookingRequest(Strict):
    title = fields.String(
        required=True, validate=validate.Length(min=1, max=255), metadata={"example": "Team sync"}
    )
    description = fields.String(allow_none=True, validate=validate.Length(max=_TEXT))
    location = fields.String(allow_none=True, validate=validate.Length(max=500))
    notes = fields.String(allow_none=True, validate=validate.Length(max=_TEXT))
    start_time = _aware(required=True, data_key="startTime", example=_EXAMPLE_START)
    end_time = _aware(required=True, data_key="endTime", example=_EXAMPLE_END)
    reminder_minutes_before = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=0, max=10080),
        data_key="reminderMinutesBefore",
        metadata=_desc("Minutes before start (default 10); null for no reminder"),
    )
    resource_id = _resource_ref()
    attendees = _attendees()
    user_id = fields.UUID(
        data_key="userId", metadata=_desc("Admins only: book on behalf of this user (403 for others)")
    )
    recurrence = fields.Nested(
        RecurrenceRequest,
        metadata=_desc(
            "Book a recurring series: startTime/endTime are its first occurrence (docs/RECURRENCE.md)"
        ),
    )
    conflict_policy = fields.String(
        validate=validate.OneOf(["reject", "skip"]),
        data_key="conflictPolicy",
        metadata=_desc(
            "With recurrence: reject (default, all or nothing) or skip the conflicting occurrences"
        ),
    )


class UpdateBookingRequest(Strict):
    title = fields.String(validate=validate.Length(min=1, max=255))
    description = fields.String(allow_none=True, validate=validate.Length(max=_TEXT))
    location = fields.String(allow_none=True, validate=validate.Length(max=500))
    notes = fields.String(allow_none=True, validate=validate.Length(max=_TEXT))
    start_time = _aware(data_key="startTime")
    end_time = _aware(data_key="endTime")
    reminder_minutes_before = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=0, max=10080),
        data_key="reminderMinutesBefore",
    )
    status = fields.String(validate=validate.OneOf(STATUSES))
    resource_id = _resource_ref()
    attendees = _attendees()


class StatusRequest(Strict):
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))


class BookingListQuery(PageQuery):
    from_ = _aware("Only bookings starting at or after this instant", data_key="from")
    to = _aware("Only bookings starting before this instant")
    status = fields.String(validate=validate.OneOf(STATUSES))
    user_id = fields.UUID(data_key="userId", metadata=_desc("Admins only: that user's bookings"))


class BookingLimitQuery(Strict):
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))
    user_id = fields.UUID(data_key="userId", metadata=_desc("Admins only: that user's bookings"))


class BookingOut(Schema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True, data_key="userId")
    title = fields.String(required=True)
    description = fields.String(allow_none=True, required=True)
    location = fields.String(allow_none=True, required=True)
    notes = fields.String(allow_none=True, required=True)
    start_time = fields.DateTime(required=True, data_key="startTime")
    end_time = fields.DateTime(required=True, data_key="endTime")
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    reminder_minutes_before = fields.Integer(allow_none=True, required=True, data_key="reminderMinutesBefore")
    reminder_sent_at = fields.DateTime(allow_none=True, required=True, data_key="reminderSentAt")
    version = fields.Integer(required=True)
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")
    resource_id = fields.UUID(allow_none=True, data_key="resourceId")
    attendees = fields.List(fields.Nested(Attendee))
    series_id = fields.UUID(
        allow_none=True, data_key="seriesId", metadata=_desc("The recurring series this is an occurrence of")
    )
    occurrence_start = fields.DateTime(
        allow_none=True,
        data_key="occurrenceStart",
        metadata=_desc("The occurrence's start in its series' rule (its RECURRENCE-ID); stays when moved"),
    )


class OccurrenceConflict(Schema):
    occurrence_start = fields.DateTime(required=True, data_key="occurrenceStart")
    start_time = fields.DateTime(required=True, data_key="startTime")
    end_time = fields.DateTime(required=True, data_key="endTime")
    conflicting_ids = fields.List(
        fields.UUID(), required=True, data_key="conflictingIds", metadata=_desc("The bookings in the way")
    )


class SeriesOut(Schema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True, data_key="userId")
    resource_id = fields.UUID(allow_none=True, required=True, data_key="resourceId")
    rrule = fields.String(required=True, metadata=_desc("The rule in its normal form (UNTIL in UTC)"))
    time_zone = fields.String(required=True, data_key="timeZone")
    start_time = fields.DateTime(required=True, data_key="startTime", metadata=_desc("The first instance"))
    end_time = fields.DateTime(required=True, data_key="endTime")
    exdates = fields.List(fields.DateTime(), required=True)
    title = fields.String(required=True)
    description = fields.String(allow_none=True, required=True)
    location = fields.String(allow_none=True, required=True)
    notes = fields.String(allow_none=True, required=True)
    reminder_minutes_before = fields.Integer(allow_none=True, required=True, data_key="reminderMinutesBefore")
    version = fields.Integer(required=True, metadata=_desc("The series' ETag; moves with every occurrence"))
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")
    occurrences = fields.List(fields.Nested(BookingOut), required=True)
    skipped = fields.List(
        fields.Nested(OccurrenceConflict),
        metadata=_desc("On create with conflictPolicy=skip: the occurrences not booked and why"),
    )


class ScopeQuery(Strict):
    scope = fields.String(
        load_default="this",
        validate=validate.OneOf(["this", "following", "all"]),
        metadata=_desc("For an occurrence of a series: this one (default), this and the following, or all"),
    )


class BookingPage(Schema):
    data = fields.List(fields.Nested(BookingOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


class BookingList(Schema):
    data = fields.List(fields.Nested(BookingOut), required=True)


class AuditEntry(Schema):
    id = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    actor_id = fields.UUID(allow_none=True, required=True, data_key="actorId")
    action = fields.String(required=True)
    entity = fields.String(required=True)
    entity_id = fields.UUID(required=True, data_key="entityId")
    before = fields.Nested(BookingOut, allow_none=True, required=True, metadata=_desc("The booking before"))
    after = fields.Nested(BookingOut, allow_none=True, required=True, metadata=_desc("The booking after"))


class AuditPage(Schema):
    data = fields.List(fields.Nested(AuditEntry), required=True)
    meta = fields.Nested(PageMeta, required=True)
