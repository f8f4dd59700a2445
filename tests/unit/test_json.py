"""JSON in and out (server/base/json.py, handlers/validation.parse_json), without I/O: orjson where it
agrees with the standard library, the standard library where it would not."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from actors.domain.errors import ValidationFailed
from handlers.validation import parse_json
from server.base.json import dumps


def refusal(raw: str | bytes) -> str:
    with pytest.raises(ValidationFailed) as caught:
        parse_json(raw)
    assert caught.value.errors[0].field == "body"
    return caught.value.errors[0].message


@pytest.mark.parametrize(
    "text",
    [
        '{"title":"Sync","startTime":"2030-01-01T10:00:00Z","reminderMinutesBefore":10}',
        '{"a":[1,2.5,-0,true,false,null,"é","\\u2028"],"b":{"c":{}}}',
        '  {"a" : 1 , "a" : 2}  ',  # duplicate keys: the last wins, as in the standard library
        '"\\ud83d\\ude00"',  # a surrogate pair is one astral character
    ],
)
def test_what_parses_parses_as_the_standard_library_reads_it(text: str) -> None:
    assert parse_json(text) == json.loads(text)
    assert parse_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize("number", ["9223372036854775807", "-9223372036854775809", "1" + "0" * 30])
def test_integers_past_64_bits_come_back_exactly(number: str) -> None:
    parsed = parse_json(f'{{"n":{number}}}')
    assert parsed == {"n": int(number)} and isinstance(parsed["n"], int)
    assert dumps(parsed) == f'{{"n":{number}}}'


def test_an_unpaired_surrogate_escape_parses_so_validation_can_name_its_field() -> None:
    assert parse_json('{"title":"a\\udc00"}') == {"title": "a\udc00"}
    assert parse_json(b'{"title":"\\ud800"}') == {"title": "\ud800"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"x":NaN}', "unexpected character"),
        ('{"x":-Infinity}', ""),
        ('{"x":NaN,"n":12345678901234567890}', "NaN is not JSON"),  # the standard library's path
        ('{"t":"\\ud800","x":-Infinity}', "-Infinity is not JSON"),
        ("[" * 2000 + "]" * 2000, "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000 + "12345678901234567890", "nested too deeply"),
        ('{"n":' + "9" * 5000 + "}", "digits"),
        (b"\xff", "not UTF-8"),
        ("", "empty"),
        ("{", ""),
        ('{"a":1}x', ""),
    ],
)
def test_what_is_not_json_is_a_body_error(raw: str | bytes, reason: str) -> None:
    assert reason in refusal(raw)


def test_dumps_writes_instants_in_utc_with_z_and_uuids_as_strings() -> None:
    some = uuid.UUID("12345678-1234-5678-1234-567812345678")
    paris = timezone(timedelta(hours=1))
    value = {
        "id": some,
        "at": datetime(2030, 1, 1, 11, 0, tzinfo=paris),
        "utc": datetime(2030, 1, 1, tzinfo=UTC),
    }
    assert json.loads(dumps(value)) == {
        "id": str(some),
        "at": "2030-01-01T10:00:00Z",
        "utc": "2030-01-01T00:00:00Z",
    }
    assert dumps({"t": "é"}) == '{"t":"é"}'  # UTF-8, not \\u escapes; compact


@pytest.mark.parametrize(
    "value",
    [{1: "one"}, {"n": 2**70}, {"t": "\ud800"}, [{"deep": {2: [2**64]}}]],
    ids=["int key", "int past 64 bits", "lone surrogate", "nested"],
)
def test_dumps_takes_what_the_standard_library_took(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_refuses_what_is_not_json() -> None:
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        dumps({"x": object()})
