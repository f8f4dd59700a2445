"""The instant field of every request schema (handlers/schemas.Instant), without I/O: RFC 3339's shape
by the C parser, anything else by marshmallow's rules, the same instants and refusals either way."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from marshmallow import Schema, ValidationError
from marshmallow.utils import from_iso_datetime

from handlers.schemas import Instant


class At(Schema):
    at = Instant(format="iso", required=True)


def load(value: object) -> datetime:
    loaded: datetime = At().load({"at": value})["at"]
    return loaded


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-01T10:00:00Z",
        "2030-01-01T10:00:00.5Z",
        "2030-01-01T10:00:00.123456+05:30",
        "2030-01-01T10:00:00-00:00",
        "2030-06-30T23:59:59-09:30",
        "2030-01-01T10:00:00+23:59",
        "2030-01-01T10:00Z",  # no seconds: marshmallow's rules
        "2030-01-01 10:00:00Z",  # a space: marshmallow's rules
        "2030-01-01T10:00:00.1234567Z",  # seven digits: marshmallow's rules
        "2030-01-01T10:00:00+0530",  # an offset without its colon: marshmallow's rules
    ],
)
def test_the_same_instant_as_marshmallows_parser(text: str) -> None:
    assert load(text) == from_iso_datetime(text)
    assert load(text).utcoffset() == from_iso_datetime(text).utcoffset()


@pytest.mark.parametrize(
    "text",
    [
        "2030-02-30T10:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-13-01T10:00:00Z",
        "2030-01-01T10:00:00+24:00",
        "2030-01-01T10:00:00",  # no offset
        "2030-01-01",
        "tomorrow",
    ],
)
def test_refused_alike(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load(text)
    assert caught.value.messages["at"][0].startswith("Not a valid") or "timezone" in str(
        caught.value.messages
    )


@pytest.mark.parametrize("value", [None, 20300101, ["2030-01-01T10:00:00Z"]])
def test_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        load(value)


def test_the_years_python_and_postgresql_can_both_hold() -> None:
    assert load("1900-01-01T00:00:00Z") == datetime(1900, 1, 1, tzinfo=UTC)
    for text in ("1899-12-31T23:59:59Z", "9001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00"):
        with pytest.raises(ValidationError, match="must be between"):
            load(text)
