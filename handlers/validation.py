"""One validation path for REST bodies, query strings and WebSocket frames."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from marshmallow import Schema
from marshmallow import ValidationError as MarshmallowError

from actors.errors import FieldError, ValidationFailed


def _flatten(messages: Any, prefix: str = "") -> list[FieldError]:
    if isinstance(messages, Mapping):
        out: list[FieldError] = []
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, "" if name == "_schema" else name))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [FieldError(prefix or "body", m) for m in messages]
    if isinstance(messages, list):
        return [e for m in messages for e in _flatten(m, prefix)]
    return [FieldError(prefix or "body", str(messages))]


def validate(schema: Schema, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise ValidationFailed("expected a JSON object", [FieldError("body", "must be a JSON object")])
    try:
        result: dict[str, Any] = schema.load(payload)
    except MarshmallowError as exc:
        errors = _flatten(exc.messages)
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise ValidationFailed(f"invalid input: {summary}", errors) from None
    return result


def parse_json(raw: str | bytes) -> Any:
    """json.loads, where anything a client can send is a ValidationFailed on `body`, never a 500."""
    try:
        return json.loads(raw)
    except RecursionError:  # "[" * 100_000: the C scanner recurses per level
        reason = "nested too deeply"
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except json.JSONDecodeError as exc:
        reason = str(exc)
    except ValueError:  # an integer literal past Python's int/str conversion limit
        reason = f"a number has more than {sys.get_int_max_str_digits()} digits"
    raise ValidationFailed(f"body is not valid JSON: {reason}", [FieldError("body", reason)])


async def read_json(request: web.Request) -> Any:
    if not request.body_exists:
        raise ValidationFailed("a JSON body is required", [FieldError("body", "missing")])
    return parse_json(await request.read())


async def body(request: web.Request, schema: Schema) -> dict[str, Any]:
    return validate(schema, await read_json(request))


def query(request: web.Request, schema: Schema) -> dict[str, Any]:
    return validate(schema, dict(request.query))
