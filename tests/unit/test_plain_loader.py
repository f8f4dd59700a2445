"""The plain loop beside `Schema.load` (handlers/validation._plain_loader), without I/O: on any payload
it either declines or answers exactly what marshmallow answers, for every request schema."""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError

import handlers
from actors.domain.errors import ValidationFailed
from handlers.booking_schemas import CreateBookingRequest
from handlers.schemas import Strict
from handlers.validation import _plain_loader, validate

for module in pkgutil.iter_modules(handlers.__path__):  # every handler module, so every request schema
    importlib.import_module(f"handlers.{module.name}")


def _subclasses(cls: type[Schema]) -> set[type[Schema]]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


REQUEST_SCHEMAS = sorted(_subclasses(Strict), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(
            [
                "2030-01-01T10:00:00Z",
                "2030-01-01T11:30:00+01:00",
                "2030-02-30T10:00:00Z",
                "2030-01-01T10:00:00",
                "1899-12-31T23:59:59Z",
                str(uuid.UUID(int=7)),
                "not-a-uuid",
                "",
                " ",
                "a\x00b",
                "x" * 300,
                "Europe/Paris",
                "FREQ=WEEKLY;COUNT=3",
                "someone@example.com",
                "scheduled",
                "cancelled",
                "reject",
                "skip",
            ]
        ),
        st.text(max_size=20),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def payloads(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    keys = [f.data_key or name for name, f in schema.load_fields.items()]
    return st.dictionaries(st.sampled_from([*keys, "unknownField"]), VALUES, max_size=len(keys) + 1)


def marshmallow_answer(schema: Schema, payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = schema.load(payload)
    except ValidationError:
        return None
    return loaded


@pytest.mark.parametrize("cls", REQUEST_SCHEMAS, ids=lambda cls: cls.__qualname__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_plain_loop_answers_as_marshmallow_or_declines(cls: type[Schema], data: st.DataObject) -> None:
    schema = cls()
    payload = data.draw(payloads(schema))
    plain = _plain_loader(schema)
    if plain is None:
        return  # this schema has hooks the loop does not run: marshmallow alone loads it
    fast = plain(payload)
    if fast is not None:
        assert fast == marshmallow_answer(schema, payload), payload


def test_the_create_body_takes_the_plain_loop_and_refusals_keep_marshmallows_messages() -> None:
    schema = CreateBookingRequest()
    body = {"title": "Sync", "startTime": "2030-01-01T10:00:00Z", "endTime": "2030-01-01T10:30:00Z"}
    plain = _plain_loader(schema)
    assert plain is not None and plain(body) == schema.load(body) == validate(schema, body)
    for bad in (
        {**body, "title": ""},
        {**body, "extra": 1},
        {"title": "Sync"},
        {**body, "reminderMinutesBefore": True},
    ):
        assert plain(bad) is None
        with pytest.raises(ValidationError) as marshmallow:
            schema.load(bad)
        with pytest.raises(ValidationFailed) as ours:
            validate(schema, bad)
        assert {e.field for e in ours.value.errors} == set(marshmallow.value.messages), bad


def test_most_request_schemas_are_compiled() -> None:
    compiled = [cls.__qualname__ for cls in REQUEST_SCHEMAS if _plain_loader(cls()) is not None]
    assert "CreateBookingRequest" in compiled and "UpdateBookingRequest" in compiled
    assert len(compiled) >= len(REQUEST_SCHEMAS) // 2, compiled
