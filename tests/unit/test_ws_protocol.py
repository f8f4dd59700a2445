"""The WebSocket wire format and pacing, without I/O."""

from __future__ import annotations

import pytest

from actors.domain.errors import Conflict, FieldError, RateLimited, ValidationFailed
from handlers.ws_protocol import BadFrame, Frame, TokenBucket, domain_error, parse_frame, peek_id, reply


def test_a_full_frame_parses() -> None:
    assert parse_frame('{"event": "get-booking", "data": {"id": "b"}, "id": "7"}') == Frame(
        "get-booking", {"id": "b"}, "7"
    )


def test_data_and_id_are_optional() -> None:
    assert parse_frame('{"event": "ping"}') == Frame("ping", {}, None)
    assert parse_frame('{"event": "ping", "data": null, "id": 3}') == Frame("ping", {}, 3)


@pytest.mark.parametrize(
    ("text", "field", "frame_id"),
    [
        ("", "body", None),
        ("{", "body", None),
        ("[]", "body", None),
        ("null", "body", None),
        ('{"id": "a"}', "event", "a"),
        ('{"event": "", "id": "a"}', "event", "a"),
        ('{"event": "' + "e" * 65 + '"}', "event", None),
        ('{"event": "ping", "data": "x", "id": 1}', "data", 1),
        ('{"event": "ping", "id": 1.5}', "id", None),
        ('{"event": "ping", "id": false}', "id", None),
        ('{"event": "ping", "id": "' + "i" * 129 + '"}', "id", None),
        ('{"event": "ping", "id": "a\\u0000"}', "id", None),
        ('{"event": "ping", "id": "a\\udc00"}', "id", None),
        ("[" * 50_000 + "]" * 50_000, "body", None),
        ('{"event": "ping", "data": {"n": ' + "9" * 5000 + "}}", "body", None),
    ],
)
def test_malformed_frames_are_400_and_keep_a_readable_id(text: str, field: str, frame_id: object) -> None:
    with pytest.raises(BadFrame) as caught:
        parse_frame(text)
    assert domain_error(caught.value, None)["data"]["status"] == 400
    assert caught.value.errors[0].field == field
    assert caught.value.frame_id == frame_id
    assert peek_id(text) == frame_id


def test_replies_echo_the_id_only_when_there_is_one() -> None:
    assert reply("pong", {}, "x") == {"event": "pong", "data": {}, "id": "x"}
    assert reply("pong", {}, None) == {"event": "pong", "data": {}}


def test_domain_errors_keep_their_status_field_errors_and_extras() -> None:
    invalid = ValidationFailed("bad", [FieldError("title", "required")])
    assert domain_error(invalid, "1") == {
        "event": "error",
        "data": {"status": 400, "message": "bad", "errors": [{"field": "title", "message": "required"}]},
        "id": "1",
    }
    overlap = Conflict("overlaps", conflictingId="abc")
    assert domain_error(overlap, None)["data"] == {
        "status": 409,
        "message": "overlaps",
        "conflictingId": "abc",
    }
    limited = RateLimited("slow down", retry_after=2)
    assert domain_error(limited, None)["data"]["retryAfter"] == 2


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert bucket.take(now=0.25) is False
    assert bucket.take(now=0.5) is True
    # Idle time refills up to the burst, never beyond it.
    assert [bucket.take(now=100.0) for _ in range(4)] == [True, True, True, False]
