"""A series' pure rules and its view (no I/O): the scopes and policies, the fields a series change may
carry, the occurrences a rule books, the capacity each would overfill."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from actors.domain.errors import FieldError, ValidationFailed
from actors.domain.recurrence import MAX_EXDATES, Rule, expand
from actors.domain.views import booking_view, iso

if TYPE_CHECKING:
    from storage.bookings import Booking
    from storage.series import Series

SCOPES = ("this", "following", "all")
POLICIES = ("reject", "skip")
# What a change with scope=following|all may carry: the template's fields, the time of day and length.
SERIES_EDITABLE = frozenset(
    {"title", "description", "location", "notes", "reminder_minutes_before", "attendees", "status"}
    | {"start_time", "end_time"}
)
TEMPLATE = ("title", "description", "location", "notes", "reminder_minutes_before")


# --- views ------------------------------------------------------------------------------------------


def series_view(s: Series, occurrences: Sequence[Booking]) -> dict[str, Any]:
    return {
        "id": str(s.id),
        "userId": str(s.user_id),
        "resourceId": str(s.resource_id) if s.resource_id else None,
        "rrule": s.rrule,
        "timeZone": s.time_zone,
        "startTime": iso(s.dtstart),
        "endTime": iso(s.dtstart + timedelta(seconds=s.duration_seconds)),
        "exdates": s.exdates,
        "title": s.title,
        "description": s.description,
        "location": s.location,
        "notes": s.notes,
        "reminderMinutesBefore": s.reminder_minutes_before,
        "version": s.version,
        "createdAt": iso(s.created_at),
        "updatedAt": iso(s.updated_at),
        "occurrences": [booking_view(b) for b in occurrences],
    }


def field_error(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{name} {message}", [FieldError(name, message)])


# --- pure rules ---------------------------------------------------------------------------------------


def plan_occurrences(
    rule: Rule,
    zone: ZoneInfo,
    *,
    start: datetime,
    end: datetime,
    exdates: Sequence[datetime],
    horizon: datetime,
) -> list[tuple[datetime, datetime]]:
    """The (start, end) of each occurrence to book: the rule's instances from `start`, less `exdates`.
    400 when `start` is not the rule's first instance, an exdate is not an instance, nothing is left, or
    the occurrences would overlap one another."""
    found = expand(rule, zone, start, horizon=horizon)
    if found[0] != start.astimezone(UTC):
        local = found[0].astimezone(zone)
        raise field_error(
            "startTime",
            f"must be the rule's first occurrence (the rule's first from startTime is {local.isoformat()})",
        )
    if len(exdates) > MAX_EXDATES:
        raise field_error("recurrence.exdates", f"may list at most {MAX_EXDATES} dates")
    known = set(found)
    skip: set[datetime] = set()
    for i, ex in enumerate(exdates):
        instant = ex.astimezone(UTC)
        if instant not in known:
            raise field_error(
                f"recurrence.exdates[{i}]", "is not an occurrence of the rule (match its start time)"
            )
        skip.add(instant)
    duration = end - start
    kept = [s for s in found if s not in skip]
    if not kept:
        raise field_error("recurrence.exdates", "exclude every occurrence: nothing would be booked")
    for a, b in pairwise(found):
        if b - a < duration:
            raise field_error(
                "endTime", "the occurrences would overlap one another (longer than their spacing)"
            )
    return [(s, s + duration) for s in kept]


def capacity_conflicts(
    capacity: int,
    existing: Sequence[tuple[uuid.UUID, datetime, datetime]],
    wanted: Sequence[tuple[datetime, datetime]],
) -> dict[int, list[uuid.UUID]]:
    """For each wanted busy range that would overfill the resource (its existing active busy ranges plus
    the earlier wanted ones that fit): the bookings that fill it at the first full instant. The maximum
    overlap of half-open ranges over [s, e) is reached at s or at another range's start inside it."""
    accepted: list[tuple[uuid.UUID | None, datetime, datetime]] = []
    out: dict[int, list[uuid.UUID]] = {}
    for i, (s, e) in enumerate(wanted):
        others: list[tuple[uuid.UUID | None, datetime, datetime]] = [
            (bid, bs, be) for bid, bs, be in existing if bs < e and be > s
        ]
        others += [(None, bs, be) for _, bs, be in accepted if bs < e and be > s]
        points = sorted({s, *(bs for _, bs, _ in others if s < bs < e)})
        full = next((p for p in points if sum(1 for _, bs, be in others if bs <= p < be) >= capacity), None)
        if full is None:
            accepted.append((None, s, e))
        else:
            out[i] = [bid for bid, bs, be in others if bid is not None and bs <= full < be]
    return out
