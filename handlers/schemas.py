"""Marshmallow schemas: request validation (REST and WebSocket) and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate

from actors.zones import ZONE_HINT, known_zones
from handlers.validation import unstorable_text


class Strict(Schema):
    """The base of every request schema: unknown fields are errors, and so is text PostgreSQL cannot
    store (NUL) or UTF-8 cannot encode (lone surrogates), in any field, before any field sees it."""

    class Meta:
        unknown = RAISE

    @pre_load
    def _refuse_unstorable_text(self, data: Any, **kwargs: Any) -> Any:
        errors = unstorable_text(data)
        if errors:
            raise ValidationError(errors)
        return data


def _desc(text: str, **extra: Any) -> dict[str, Any]:
    return {"description": text, **extra}


# --- auth ---------------------------------------------------------------------------------------


class RegisterRequest(Strict):
    email = fields.Email(required=True, validate=validate.Length(max=254), metadata=_desc("Unique, any case"))
    password = fields.String(
        required=True, validate=validate.Length(min=8, max=128), load_only=True, metadata=_desc("8-128 chars")
    )
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))


class LoginRequest(Strict):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=128), load_only=True)


class RefreshRequest(Strict):
    refresh_token = fields.String(
        required=True, validate=validate.Length(min=1, max=4096), data_key="refreshToken"
    )


class UserOut(Schema):
    id = fields.UUID(required=True)
    email = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(["user", "admin"]))
    status = fields.String(required=True, validate=validate.OneOf(["active", "suspended"]))
    time_zone = fields.String(
        required=True,
        data_key="timeZone",
        metadata=_desc("IANA name; the default zone of availability labels (UTC until set)"),
    )
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class MePatch(Strict):
    name = fields.String(validate=validate.Length(min=1, max=100))
    time_zone = fields.String(
        data_key="timeZone",
        validate=validate.Length(min=1, max=64),
        metadata=_desc("IANA time zone name (zoneinfo), e.g. Europe/Berlin"),
    )


class SessionOut(Schema):
    user = fields.Nested(UserOut, required=True)
    access_token = fields.String(required=True, data_key="accessToken")
    refresh_token = fields.String(required=True, data_key="refreshToken")
    token_type = fields.String(required=True, metadata=_desc("Always `Bearer`"), data_key="tokenType")
    expires_in = fields.Integer(
        required=True, metadata=_desc("Access-token lifetime in seconds"), data_key="expiresIn"
    )


# --- users (admin) ------------------------------------------------------------------------------


class PageQuery(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class UserPatch(Strict):
    role = fields.String(validate=validate.OneOf(["user", "admin"]))
    status = fields.String(validate=validate.OneOf(["active", "suspended"]))


class PageMeta(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total_pages = fields.Integer(required=True, data_key="totalPages")


class UserPage(Schema):
    data = fields.List(fields.Nested(UserOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


# --- errors & operations ------------------------------------------------------------------------


class FieldErrorOut(Schema):
    field = fields.String(required=True)
    message = fields.String(required=True)


class Problem(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(required=True, data_key="requestId")
    errors = fields.List(fields.Nested(FieldErrorOut))
    conflicting_id = fields.UUID(
        metadata=_desc("On 409 overlap: the booking in the way"), data_key="conflictingId"
    )
    conflicting_ids = fields.List(
        fields.UUID(),
        metadata=_desc("On 409 for a resource: the bookings that fill it (`resource full`)"),
        data_key="conflictingIds",
    )
    retry_after = fields.Integer(metadata=_desc("On 429: seconds to wait"), data_key="retryAfter")


class HealthChecks(Schema):
    database = fields.String(required=True)
    redis = fields.String(required=True)


class HealthOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded"]))
    checks = fields.Nested(HealthChecks, required=True)
    version = fields.String(required=True)


# --- bookings -----------------------------------------------------------------------------------

STATUSES = ["scheduled", "in-progress", "completed", "cancelled"]
_TEXT = 5000


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class Instant(fields.AwareDateTime):
    """An aware datetime that Python and PostgreSQL can both hold once in UTC: years 1900 to 9000.

    `0001-01-01T00:00:00+14:00` parses, but is before year 1 in UTC: asyncpg's conversion overflowed.
    """

    default_error_messages = {
        "range": f"must be between {EARLIEST:%Y-%m-%dT%H:%M:%SZ} and {LATEST:%Y-%m-%dT%H:%M:%SZ} in UTC"
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            in_utc = parsed.astimezone(UTC)
        except OverflowError:
            raise self.make_error("range") from None
        if not EARLIEST <= in_utc <= LATEST:
            raise self.make_error("range")
        return parsed


def _aware(
    description: str = "ISO-8601 with an offset, e.g. 2030-01-01T10:00:00Z",
    *,
    example: str | None = None,
    **kwargs: Any,
) -> Instant:
    extra = {"example": example} if example else {}
    return Instant(format="iso", metadata=_desc(description, **extra), **kwargs)


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
