"""The public (camelCase) shape of domain objects: REST bodies, WebSocket frames, events, replays."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from storage.bookings import Booking


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
        "seriesId": str(b.series_id) if b.series_id else None,
        "occurrenceStart": iso(b.occurrence_start) if b.occurrence_start else None,
    }


_UUIDS = frozenset({"id", "user_id", "resource_id", "series_id"})
_TIMES = frozenset(
    {
        "start_time",
        "end_time",
        "reminder_sent_at",
        "created_at",
        "updated_at",
        "busy_start",
        "busy_end",
        "occurrence_start",
    }
)


def booking_from_snapshot(snapshot: dict[str, Any]) -> Booking:
    """A booking from its stored JSON snapshot (PostgreSQL's to_jsonb of the row, or Booking.snapshot()).
    A key the snapshot lacks (written before the column existed) takes the field's default."""
    values: dict[str, Any] = {}
    for f in fields(Booking):
        if f.name not in snapshot:
            continue
        raw = snapshot[f.name]
        if raw is not None and f.name in _UUIDS:
            raw = uuid.UUID(raw)
        elif raw is not None and f.name in _TIMES:
            raw = datetime.fromisoformat(raw)
        values[f.name] = raw
    return Booking(**values)


def snapshot_view(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """An audit log's stored row in the booking resource's own shape (GET /api/booking/{id})."""
    return None if snapshot is None else booking_view(booking_from_snapshot(snapshot))
