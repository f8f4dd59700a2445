"""JSON encoding for responses and frames: UTC ISO-8601 with `Z`, UUIDs as strings."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from actors.domain.views import iso


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


__all__ = ["dumps", "iso"]
