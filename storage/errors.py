"""Storage-level failures in the domain's terms: storage raises them, never a SQLSTATE, and the actors
turn them into the answer (a 409 naming the other booking, a retry).

`Database.connect()` and `Database.begin()` translate what any statement (or the commit) can hit:
an exclusion constraint (`Overlap`) and a deadlock (`Deadlock`). A unique violation means something
different per table, so the storage function that writes the row raises its own (`DuplicateName`...).
"""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    pass


class DuplicateEmail(StorageError):
    pass


class DuplicateName(StorageError):
    """An active row already has this name (resources: any case)."""


class Overlap(StorageError):
    """An exclusion constraint refused the write (23P01): the row would overlap another; `constraint`
    names which."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(constraint or "exclusion constraint")
        self.constraint = constraint


class Deadlock(StorageError):
    """PostgreSQL aborted the transaction to break a deadlock (40P01): it can be run again."""


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of an asyncpg error (or of one it wraps), if any."""
    orig: Any = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def translated(exc: BaseException) -> StorageError | None:
    """The storage error a database failure means, or None when it means nothing to the domain."""
    code = sqlstate(exc)
    if code == "23P01":
        constraint = getattr(exc, "constraint_name", None)
        return Overlap(constraint if isinstance(constraint, str) else None)
    if code == "40P01":
        return Deadlock(str(exc))
    return None
