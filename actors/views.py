"""The public (camelCase) shape of domain objects: REST bodies, WebSocket frames, events, replays."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from storage.bookings import Booking


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def booking_view(b: Booking) -> dict[str, Any]:
    return {
        "id": str(b.id),
        "userId": str(b.user_id),
        "title": b.title,
        "description": b.description,
        "location": b.location,
        "notes": b.notes,
        "startTime": iso(b.start_time),
        "endTime": iso(b.end_time),
        "status": b.status,
        "reminderMinutesBefore": b.reminder_minutes_before,
        "reminderSentAt": iso(b.reminder_sent_at) if b.reminder_sent_at else None,
        "version": b.version,
        "createdAt": iso(b.created_at),
        "updatedAt": iso(b.updated_at),
        "resourceId": str(b.resource_id) if b.resource_id else None,
        "attendees": b.attendees,
    }


# Internal columns an audit snapshot holds that the public shape never shows.
_INTERNAL = frozenset({"user_seq", "resource_seq", "busy_start", "busy_end", "resource_exclusive"})
_TIMES = frozenset({"start_time", "end_time", "reminder_sent_at", "created_at", "updated_at"})
_PUBLIC = {f.name: _camel(f.name) for f in fields(Booking) if f.name not in _INTERNAL}


def snapshot_view(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """An audit log's stored row (snake_case, as to_jsonb or Booking.snapshot wrote it) in the booking
    resource's shape: the same camelCase names, UTC times with `Z`, no internal columns."""
    if snapshot is None:
        return None
    view: dict[str, Any] = {}
    for name, key in _PUBLIC.items():
        value = snapshot.get(name)
        if name in _TIMES and isinstance(value, str):
            value = iso(datetime.fromisoformat(value))
        if name == "attendees" and value is None:  # written before bookings had attendees
            value = []
        view[key] = value
    return view
