"""Storage-level failures, raised by storage functions and mapped to domain errors by callers."""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    pass


class DuplicateEmail(StorageError):
    pass


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of an asyncpg error (or of one it wraps), if any."""
    orig: Any = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None
