"""Marshmallow schemas every area shares: the strict base of request schemas, pages, problems, health,
instants. Each area's own are in auth_schemas.py, booking_schemas.py, resource_schemas.py and
availability_schemas.py; they validate requests (REST and WebSocket) and make the OpenAPI document."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

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


# --- pages --------------------------------------------------------------------------------------


class PageQuery(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class PageMeta(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total_pages = fields.Integer(required=True, data_key="totalPages")


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


# --- instants and text -------------------------------------------------------------------------

_TEXT = 5000


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})\Z", re.ASCII)


class Instant(fields.AwareDateTime):
    """An aware datetime that Python and PostgreSQL can both hold once in UTC: years 1900 to 9000.

    `0001-01-01T00:00:00+14:00` parses, but is before year 1 in UTC: asyncpg's conversion overflowed.
    """

    default_error_messages = {
        "range": f"must be between {EARLIEST:%Y-%m-%dT%H:%M:%SZ} and {LATEST:%Y-%m-%dT%H:%M:%SZ} in UTC"
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        # RFC 3339's one shape (what clients send) by the C parser; anything else, marshmallow's rules.
        # The same instants either way: marshmallow's pattern accepts every string the fast one does.
        if isinstance(value, str) and _RFC3339.match(value):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:  # 2026-02-30, 24:00, an offset of 24 hours
                raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None
        else:
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
