"""Pure rules every writer applies the same way (no I/O): the expected version, and the status a
booking may move to."""

from __future__ import annotations

from actors.errors import Conflict, PreconditionFailed

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
