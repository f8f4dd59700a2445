"""JSON for responses, frames, events and bodies: UTC ISO-8601 with `Z`, UUIDs as strings.

orjson encodes and parses (docs/BENCHMARKS.md: a fifteenth of the standard library's cost on a booking
view, which every create encodes twice, for its response and its event). What orjson refuses to encode
— keys that are not strings, integers past 64 bits, text with unpaired surrogates — goes through the
standard library's rules instead, so nothing that encoded before fails now.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import orjson

from actors.domain.views import iso

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME  # datetimes through `_default`: iso(), not orjson's +00:00
JSONDecodeError = orjson.JSONDecodeError  # a ValueError (and json.JSONDecodeError)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact JSON text."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS).decode()
    except TypeError:
        return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


loads = orjson.loads  # bytes or str; JSONDecodeError on anything that is not strict JSON (NaN too)

__all__ = ["JSONDecodeError", "dumps", "iso", "loads"]
