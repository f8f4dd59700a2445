"""Domain errors: what went wrong, in the domain's words. They carry no HTTP status; the web edge maps
each kind to its answer in one place (server/web/problems.py) for REST and WebSocket alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    """A refused input in general (`extra`: fields the answer carries besides the detail)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(DomainError):
    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class Unauthorized(DomainError):
    """No or bad credentials."""


class Forbidden(DomainError):
    """Credentials that do not allow this."""


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    """The current state refuses the change (an overlap, a transition, contention)."""


class PreconditionFailed(DomainError):
    """The caller's expected version is not the current one."""


class IdempotencyMismatch(DomainError):
    """An idempotency key reused with another request."""


class RateLimited(DomainError):
    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retryAfter=retry_after)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A backing service cannot answer now; retry."""
