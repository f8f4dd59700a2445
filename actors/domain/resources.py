"""A resource's pure rules and views (no I/O): its view and its busy view, its booking window and
working hours, the busy range its buffers make, and the refusals a resource booking meets."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from actors.domain.availability import Hours, describe, hours_of
from actors.domain.errors import Conflict, FieldError, ValidationFailed
from actors.domain.views import iso

if TYPE_CHECKING:
    from storage.bookings import Booking
    from storage.resource_bookings import Busy
    from storage.resources import Resource
    from storage.users import User

MAX_BUSY_WINDOW = timedelta(days=31)
BUSY_CHANGED = "resource.busy.changed"


def resource_view(r: Resource) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "name": r.name,
        "description": r.description,
        "kind": r.kind,
        "timeZone": r.time_zone,
        "capacity": r.capacity,
        "bufferBeforeMinutes": r.buffer_before_minutes,
        "bufferAfterMinutes": r.buffer_after_minutes,
        "minNoticeMinutes": r.min_notice_minutes,
        "maxAdvanceDays": r.max_advance_days,
        "active": r.active,
        "version": r.version,
        "createdAt": iso(r.created_at),
        "updatedAt": iso(r.updated_at),
    }


def busy_view(b: Busy, viewer: User) -> dict[str, Any]:
    """A busy interval; who booked it and why only for its owner and admins."""
    view: dict[str, Any] = {"start": iso(b.busy_start), "end": iso(b.busy_end)}
    if viewer.is_admin or b.user_id == viewer.id:
        view.update(
            bookingId=str(b.booking_id),
            userId=str(b.user_id),
            title=b.title,
            startTime=iso(b.start_time),
            endTime=iso(b.end_time),
        )
    return view


def busy_range(resource: Resource, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    return (
        start - timedelta(minutes=resource.buffer_before_minutes),
        end + timedelta(minutes=resource.buffer_after_minutes),
    )


def check_window(resource: Resource, start: datetime, now: datetime) -> None:
    """The resource's own booking window: minimum notice and maximum advance (400s on startTime)."""
    errors: list[FieldError] = []
    if start - now < timedelta(minutes=resource.min_notice_minutes):
        errors.append(
            FieldError(
                "startTime", f"this resource needs at least {resource.min_notice_minutes} minutes' notice"
            )
        )
    if start - now > timedelta(days=resource.max_advance_days):
        errors.append(
            FieldError(
                "startTime", f"this resource takes bookings at most {resource.max_advance_days} days ahead"
            )
        )
    if errors:
        raise ValidationFailed("; ".join(f"{e.field} {e.message}" for e in errors), errors)


def resource_hours(resource: Resource) -> Hours:
    return hours_of(ZoneInfo(resource.time_zone), resource.hours_weekly, resource.hours_overrides)


def check_hours(resource: Resource, start: datetime, end: datetime) -> None:
    """400 on startTime, naming the hours, when [start, end) is not inside one open stretch."""
    hours = resource_hours(resource)
    if hours.weekly is None and not hours.overrides:
        return  # open around the clock: nothing to check
    if not hours.contains(start, end):
        local = start.astimezone(hours.zone)
        text = describe(hours, local.date())
        raise ValidationFailed(
            f"startTime outside the resource's working hours ({text}, {resource.time_zone})",
            [FieldError("startTime", f"outside the resource's working hours: {text} ({resource.time_zone})")],
        )


def unknown_resource() -> ValidationFailed:
    return ValidationFailed("no such resource", [FieldError("resourceId", "no resource has this id")])


def retired(resource: Resource) -> Conflict:
    return Conflict(f"resource {resource.id} is retired and takes no new bookings")


def duplicate(name: str) -> Conflict:
    return Conflict(f"an active resource is already named {name!r} (names are unique, any case)")


def full(resource: Resource, ids: list[uuid.UUID]) -> Conflict:
    if resource.capacity == 1:
        return Conflict(
            f"the resource is booked at that time by booking {ids[0]} (buffers included)",
            conflictingId=str(ids[0]),
            conflictingIds=[str(i) for i in ids],
        )
    return Conflict("resource full", conflictingIds=[str(i) for i in ids])


def busy_of(b: Booking | None) -> tuple[uuid.UUID, datetime, datetime] | None:
    """The resource time an active resource booking holds, or None."""
    if b is None or b.status not in ("scheduled", "in-progress") or b.resource_id is None:
        return None
    if b.busy_start is None or b.busy_end is None:  # pragma: no cover  (ck_bookings_resource_shape)
        return None
    return b.resource_id, b.busy_start, b.busy_end
