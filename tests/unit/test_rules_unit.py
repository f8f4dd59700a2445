"""The rules moved out of the HTTP paths, tested with no I/O: If-Match and Idempotency-Key syntax, the
request fingerprint, status transitions, the expected version, the one error mapping REST and WebSocket
share, and what storage turns a database failure into."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors.base import Busy
from actors.domain import errors as e
from actors.domain.rules import TRANSITIONS, Rules, check_status_change, check_times, check_version
from actors.idempotency import request_hash
from handlers.preconditions import IDEMPOTENCY_KEY, idempotency_key, parse_if_match
from handlers.ws_protocol import domain_error
from server.web.problems import as_domain_error, details, from_domain, kind_of
from storage.errors import Deadlock, Overlap, translated

# --- If-Match -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "version"),
    [(None, None), ("", None), ("*", None), (" * ", None), ('"3"', 3), ('W/"3"', 3), ("3", 3), ('"0"', 0)],
)
def test_if_match_gives_the_version_or_no_precondition(header: str | None, version: int | None) -> None:
    assert parse_if_match(header) == version


@pytest.mark.parametrize("header", ['"abc"', '"-1"', '"1.5"', '"1234567890"', '"\uff13"', 'W/""'])
def test_if_match_refuses_what_this_api_never_sent(header: str) -> None:
    with pytest.raises(e.PreconditionFailed, match="If-Match must be an ETag"):
        parse_if_match(header)


# --- Idempotency-Key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k", "create-abc-1", "x" * 255, "!~"])
def test_an_idempotency_key_is_visible_ascii(key: str) -> None:
    assert idempotency_key(key) == key
    assert IDEMPOTENCY_KEY.match(key)


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "tab\t", "é"])
def test_an_idempotency_key_outside_the_rule_is_a_field_error(key: str) -> None:
    with pytest.raises(e.ValidationFailed) as refused:
        idempotency_key(key)
    assert refused.value.errors == [e.FieldError("Idempotency-Key", "1-255 visible ASCII characters")]
    assert not IDEMPOTENCY_KEY.match(key)


def test_no_idempotency_key_is_no_key() -> None:
    assert idempotency_key(None) is None


def test_the_request_hash_ignores_offsets_and_key_order() -> None:
    start = datetime(2030, 1, 1, 9, tzinfo=UTC)
    berlin = start.astimezone(timezone(timedelta(hours=1)))
    resource = uuid.uuid4()
    one = request_hash({"title": "a", "start_time": start, "resource_id": resource})
    assert one == request_hash({"resource_id": resource, "start_time": berlin, "title": "a"})
    assert one != request_hash({"title": "b", "start_time": start, "resource_id": resource})
    assert one != request_hash(
        {"title": "a", "start_time": start + timedelta(minutes=1), "resource_id": resource}
    )
    assert len(one) == 64


# --- status and version -------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "allowed"), sorted(TRANSITIONS.items()))
def test_status_moves_only_along_the_transitions(current: str, allowed: frozenset[str]) -> None:
    for new in ("scheduled", "in-progress", "completed", "cancelled"):
        if new in allowed:
            check_status_change(current, new)
        else:
            with pytest.raises(e.Conflict):
                check_status_change(current, new)


def test_a_final_booking_refuses_any_change() -> None:
    for final in ("completed", "cancelled"):
        with pytest.raises(e.Conflict, match=f"a {final} booking cannot be changed"):
            check_status_change(final, None)
    check_status_change("scheduled", None)
    check_status_change("in-progress", None)


def test_the_expected_version_must_be_the_current_one() -> None:
    check_version("booking", 3, None)
    check_version("booking", 3, 3)
    with pytest.raises(e.PreconditionFailed, match="booking is at version 3, not 2"):
        check_version("booking", 3, 2)


# --- the one error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (e.DomainError("x"), 400, "bad-request"),
        (e.ValidationFailed("x"), 400, "validation-error"),
        (e.Unauthorized("x"), 401, "unauthorized"),
        (e.Forbidden("x"), 403, "forbidden"),
        (e.NotFound("x"), 404, "not-found"),
        (e.Conflict("x"), 409, "conflict"),
        (e.PreconditionFailed("x"), 412, "precondition-failed"),
        (e.IdempotencyMismatch("x"), 422, "idempotency-key-reuse"),
        (e.RateLimited("x", retry_after=2), 429, "rate-limited"),
        (Busy(), 429, "rate-limited"),  # a subclass answers as its base
        (e.Unavailable("x"), 503, "unavailable"),
    ],
)
def test_rest_and_websocket_answer_an_error_with_the_same_status(
    error: e.DomainError, status: int, slug: str
) -> None:
    assert (kind_of(error).status, kind_of(error).slug) == (status, slug)
    response = from_domain(error, "req-1")
    assert response.status == status
    frame = domain_error(error, "f1")
    assert frame["event"] == "error" and frame["id"] == "f1"
    assert frame["data"]["status"] == status and frame["data"]["message"] == error.detail


def test_field_errors_and_extras_travel_in_both_answers() -> None:
    refused = e.ValidationFailed(
        "startTime must be in the future", [e.FieldError("startTime", "must be in the future")]
    )
    assert details(refused) == {"errors": [{"field": "startTime", "message": "must be in the future"}]}
    assert domain_error(refused, None)["data"]["errors"] == [
        {"field": "startTime", "message": "must be in the future"}
    ]
    assert "errors" not in domain_error(e.ValidationFailed("bad"), None)["data"]  # none to list: left out
    assert details(e.ValidationFailed("bad")) == {"errors": []}  # problem+json always lists them
    overlap = e.Conflict("overlaps", conflictingId="b1")
    assert domain_error(overlap, None)["data"]["conflictingId"] == "b1"


def test_rest_headers_follow_the_kind() -> None:
    assert from_domain(e.RateLimited("slow", retry_after=7), "r").headers["Retry-After"] == "7"
    assert from_domain(e.Unavailable("down"), "r").headers["Retry-After"] == "1"
    assert from_domain(e.Unauthorized("who"), "r").headers["WWW-Authenticate"] == "Bearer"
    assert "Retry-After" not in from_domain(e.Conflict("no"), "r").headers


def test_a_dependency_down_is_unavailable_and_anything_else_a_500() -> None:
    mapped = as_domain_error(ConnectionRefusedError())
    assert isinstance(mapped, e.Unavailable)
    assert mapped.detail == "a backing service is unavailable; retry shortly"
    own = e.NotFound("gone")
    assert as_domain_error(own) is own
    assert as_domain_error(ValueError("bug")) is None


# --- storage's translation ----------------------------------------------------------------------------


class _FakePostgresError(Exception):
    """Only the attributes asyncpg's errors carry that the translation reads."""

    def __init__(self, sqlstate: str, constraint_name: str | None = None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name


def test_storage_names_an_overlap_and_a_deadlock_and_nothing_else() -> None:
    overlap = translated(_FakePostgresError("23P01", "bookings_no_overlap"))
    assert isinstance(overlap, Overlap) and overlap.constraint == "bookings_no_overlap"
    assert isinstance(translated(_FakePostgresError("40P01")), Deadlock)
    assert translated(_FakePostgresError("23505")) is None  # a unique violation: per table, in storage
    assert translated(_FakePostgresError("08006")) is None  # a dependency failure: the web edge's 503


# --- a booking's times --------------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_times_in_the_future_within_the_limits_pass() -> None:
    check_times(
        Rules(), start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=2), now=NOW, start_changed=True
    )
    # An unchanged start may be in the past (a booking under way being extended).
    check_times(
        Rules(), start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=2), now=NOW, start_changed=False
    )


@pytest.mark.parametrize(
    ("start", "end", "field", "message"),
    [
        (NOW, NOW + timedelta(hours=1), "startTime", "must be in the future"),
        (
            NOW + timedelta(days=731),
            NOW + timedelta(days=731, hours=1),
            "startTime",
            "must be within 730 days",
        ),
        (NOW + timedelta(hours=2), NOW + timedelta(hours=1), "endTime", "must be after startTime"),
        (NOW + timedelta(hours=1), NOW + timedelta(days=8), "endTime", "at most 7 days"),
    ],
)
def test_times_outside_the_rules_name_their_field(
    start: datetime, end: datetime, field: str, message: str
) -> None:
    with pytest.raises(e.ValidationFailed) as refused:
        check_times(Rules(), start=start, end=end, now=NOW, start_changed=True)
    assert [f.field for f in refused.value.errors] == [field]
    assert message in refused.value.errors[0].message
