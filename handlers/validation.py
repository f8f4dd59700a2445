"""One validation path for REST bodies, query strings and WebSocket frames."""

from __future__ import annotations

import json
import re
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, missing
from marshmallow import ValidationError as MarshmallowError

from actors.domain.errors import FieldError, ValidationFailed
from server.base.json import JSONDecodeError, loads

# PostgreSQL refuses NUL in text (SQLSTATE 22021), and a lone surrogate has no UTF-8 encoding at all
# (asyncpg, and any response that would echo it, fail). A valid astral character is one code point in a
# Python str, so only unpaired surrogates match.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
# In json.dumps(..., ensure_ascii=False) output surrogates stay raw and NUL is the escape `\u0000`.
_SURROGATE_CHAR = re.compile(r"[\ud800-\udfff]")
_NUL = "must not contain the NUL character (\\u0000)"
_SURROGATE = "must not contain unpaired surrogates (\\ud800-\\udfff)"


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored or sent back, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return _NUL if found.group() == "\x00" else _SURROGATE


def _unstorable_within(value: Any) -> str | None:
    """`unstorable` for a value of any JSON type; containers are searched at C speed, not walked."""
    if isinstance(value, str):
        return unstorable(value)
    if not isinstance(value, (dict, list)):
        return None
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # deeper than the encoder goes; no schema field takes that anyway
        return "nested too deeply"
    if _SURROGATE_CHAR.search(text):
        return _SURROGATE
    # Drop escaped backslashes first, so a client's literal backslash before "u0000" is no NUL.
    if "\\u0000" in text and "\\u0000" in text.replace("\\\\", ""):
        return _NUL
    return None


def unstorable_text(payload: Any) -> dict[str, list[str]]:
    """Marshmallow-shaped messages, by top-level field, for text that `unstorable` refuses.

    A field name that is itself unstorable is reported as its JSON escape, never echoed raw.
    """
    if not isinstance(payload, dict):
        reason = _unstorable_within(payload)
        return {"body": [reason]} if reason else {}
    errors: dict[str, list[str]] = {}
    for key, value in payload.items():
        name = str(key)
        if (reason := unstorable(name)) is not None:
            errors[json.dumps(name)[1:-1]] = [f"field name {reason}"]
        elif (reason := _unstorable_within(value)) is not None:
            errors[name] = [reason]
    return errors


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
    plain = _plain_loader(schema)
    if plain is not None and (loaded := plain(payload)) is not None:
        return loaded
    try:
        result: dict[str, Any] = schema.load(payload)
    except MarshmallowError as exc:
        errors = _flatten(exc.messages)
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise ValidationFailed(f"invalid input: {summary}", errors) from None
    return result


# --- the accepted payload, faster ----------------------------------------------------------------------
#
# `Schema.load` spends more on its own machinery (an error store, a getter closure and a stored call per
# field, hook look-ups, the unknown-field set) than the fields spend on the values: a third of a create's
# validation, measured (docs/BENCHMARKS.md). For a schema whose only hook is a pre_load and whose options
# are the defaults, `_plain_loader` does the same steps in a plain loop: the pre_load hooks, every field's
# own `deserialize` (type, required, allow_none, load_default, validators, nested schemas alike), unknown
# keys refused. The schema stays the one definition. Anything it refuses (any ValidationError, an unknown
# key) goes to `schema.load` after all, so every refusal carries marshmallow's own messages.

Loader = Callable[[Mapping[str, Any]], dict[str, Any] | None]
_loaders: weakref.WeakKeyDictionary[Schema, Loader | None] = weakref.WeakKeyDictionary()


def _plain_loader(schema: Schema) -> Loader | None:
    try:
        return _loaders[schema]
    except KeyError:
        loader = _loaders[schema] = _compile(schema)
        return loader


def _compile(schema: Schema) -> Loader | None:
    hooks = {tag: processors for tag, processors in schema._hooks.items() if processors}
    if (
        set(hooks) - {"pre_load"}
        or any(pass_many for _, pass_many, _ in hooks.get("pre_load", ()))
        or schema.many
        or schema.partial is not None
        or schema.unknown != RAISE
    ):
        return None
    pre_load = [getattr(schema, name) for name, _, _ in hooks.get("pre_load", ())]
    plan = [
        (name, field.data_key if field.data_key is not None else name, field.attribute or name, field)
        for name, field in schema.load_fields.items()
    ]
    known = frozenset(data_key for _, data_key, _, _ in plan)

    def load(payload: Mapping[str, Any]) -> dict[str, Any] | None:
        if not known.issuperset(payload):
            return None
        try:
            data: Any = payload
            for hook in pre_load:
                data = hook(data, many=False, partial=None)
            out: dict[str, Any] = {}
            for name, data_key, attribute, field in plan:
                raw = data.get(data_key, missing)
                if raw is missing:  # Field.deserialize's own steps for an absent value
                    if field.required:
                        return None
                    value = field.load_default() if callable(field.load_default) else field.load_default
                else:
                    value = field.deserialize(raw, name, data)
                if value is not missing:
                    out[attribute] = value
        except MarshmallowError:
            return None
        return out

    return load


def parse_json(raw: str | bytes) -> Any:
    """Strict JSON (no NaN or Infinity), where anything a client can send is a ValidationFailed on `body`,
    never a 500.

    orjson parses (server/base/json.py), except where its answer would differ from the standard
    library's: an integer of 19 digits or more (orjson reads one past 64 bits as a float, and the value
    must come back as sent) and an escaped unpaired surrogate (orjson refuses the document; read, it
    reaches validation, which names the field that holds it, as docs/WEBSOCKET.md promises).
    """
    long_number = _LONG_BYTES.search(raw) if isinstance(raw, bytes) else _LONG_TEXT.search(raw)
    if long_number is not None:
        return _standard(raw)
    try:
        return loads(raw)
    except JSONDecodeError as exc:
        if "surrogate" in str(exc):
            return _standard(raw)
        reason = _REASONS.get(str(exc).partition(":")[0], str(exc))
    raise ValidationFailed(f"body is not valid JSON: {reason}", [FieldError("body", reason)])


def _standard(raw: str | bytes) -> Any:
    """The standard library's json.loads, as strict as orjson about NaN and Infinity."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:  # "[" * 100_000: the C scanner recurses per level
        reason = "nested too deeply"
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except _Constant as exc:
        reason = str(exc)
    except json.JSONDecodeError as exc:
        reason = str(exc)
    except ValueError:  # an integer literal past Python's int/str conversion limit
        reason = f"a number has more than {sys.get_int_max_str_digits()} digits"
    raise ValidationFailed(f"body is not valid JSON: {reason}", [FieldError("body", reason)])


_LONG_TEXT, _LONG_BYTES = re.compile(r"[0-9]{19}"), re.compile(rb"[0-9]{19}")
# orjson's wording of a refusal, where this API has its own words for it.
_REASONS = {"depth limit exceeded": "nested too deeply"}


class _Constant(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Constant(f"{name} is not JSON")


async def read_json(request: web.Request) -> Any:
    if not request.body_exists:
        raise ValidationFailed("a JSON body is required", [FieldError("body", "missing")])
    return parse_json(await request.read())


async def body(request: web.Request, schema: Schema) -> dict[str, Any]:
    return validate(schema, await read_json(request))


def query(request: web.Request, schema: Schema) -> dict[str, Any]:
    return validate(schema, dict(request.query))
