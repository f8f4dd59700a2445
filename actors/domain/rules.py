"""A booking's pure rules, the same for every writer (no I/O): its times, the expected version, and the
status it may move to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from actors.domain.errors import Conflict, FieldError, PreconditionFailed, ValidationFailed

EDITABLE = ("title", "description", "location", "notes", "start_time", "end_time", "reminder_minutes_before")


@dataclass(frozen=True, slots=True)
class Rules:
    max_duration: timedelta = timedelta(days=7)
    max_advance: timedelta = timedelta(days=730)
    default_reminder_minutes: int = 10


TRANSITIONS: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"in-progress", "completed", "cancelled"}),
    "in-progress": frozenset({"completed", "cancelled"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
}


def check_version(what: str, current: int, expected: int | None) -> None:
    """If-Match: the row must still be at the version the caller saw (None: no precondition)."""
    if expected is not None and expected != current:
        raise PreconditionFailed(f"{what} is at version {current}, not {expected}")


def check_status_change(current: str, new: str | None) -> None:
    """A completed or cancelled booking is final; otherwise the status moves only along TRANSITIONS
    (`new` None: the status does not change)."""
    if current in ("completed", "cancelled"):
        raise Conflict(f"a {current} booking cannot be changed")
    if new is not None and new not in TRANSITIONS[current]:
        raise Conflict(f"status cannot go from {current} to {new}")


def check_times(rules: Rules, *, start: datetime, end: datetime, now: datetime, start_changed: bool) -> None:
    errors: list[FieldError] = []
    if start_changed and start <= now:
        errors.append(FieldError("startTime", "must be in the future"))
    if start_changed and start - now > rules.max_advance:
        errors.append(FieldError("startTime", f"must be within {rules.max_advance.days} days from now"))
    if end <= start:
        errors.append(FieldError("endTime", "must be after startTime"))
    elif end - start > rules.max_duration:
        errors.append(FieldError("endTime", f"booking may last at most {rules.max_duration.days} days"))
    if errors:
        raise ValidationFailed("; ".join(f"{e.field} {e.message}" for e in errors), errors)
