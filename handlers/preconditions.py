"""The request's preconditions, one rule each for REST headers and WebSocket `data`: `If-Match` (a
version) and `Idempotency-Key` (a replay key). The actors see their values, never the syntax."""

from __future__ import annotations

import re

from actors.domain.errors import FieldError, PreconditionFailed, ValidationFailed

# Also the WebSocket `idempotencyKey` field's pattern (handlers/ws_commands.py).
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def idempotency_key(value: str | None) -> str | None:
    """The `Idempotency-Key` header: 1-255 visible ASCII characters, or absent."""
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            [FieldError("Idempotency-Key", "1-255 visible ASCII characters")],
        )
    return value


def parse_if_match(header: str | None) -> int | None:
    """`"3"`, `W/"3"` or `3` → 3; `*` or absent → None (no precondition)."""
    if header is None or header.strip() in {"", "*"}:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise PreconditionFailed("If-Match must be an ETag returned by this API")
    return int(value)
