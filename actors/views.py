"""The public (camelCase) shape of domain objects: REST bodies, WebSocket frames, events, replays."""

from __future__ import annotations

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
    }
