"""The series' pure rules, no I/O: RRULE parsing and its normal form, expansion in local time across DST
gaps and folds, exdates, and the capacity count against a minute-by-minute oracle."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain.errors import ValidationFailed
from actors.domain.recurrence import expand, instances, parse_rrule
from actors.domain.series import capacity_conflicts, plan_occurrences

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_the_normal_form_is_stable_and_parses_back() -> None:
    rule = parse_rrule("rrule:byday=MO,we;freq=weekly;count=5", zone=BERLIN)
    assert rule.text() == "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,WE;COUNT=5"
    assert parse_rrule(rule.text(), zone=BERLIN) == rule
    until = parse_rrule("FREQ=DAILY;UNTIL=20270401", zone=BERLIN)
    # A date-only UNTIL is the end of that day in the series' zone (CEST: UTC+2).
    assert until.until == utc(2027, 4, 1, 21, 59, 59)
    assert until.text().endswith("UNTIL=20270401T215959Z")


def test_a_daily_series_through_the_spring_gap_takes_the_offset_from_before_it() -> None:
    # 02:30 does not exist in Berlin on 2027-03-28: RFC 5545 takes the offset before the gap (CET).
    rule = parse_rrule("FREQ=DAILY;COUNT=3", zone=BERLIN)
    found = expand(rule, BERLIN, datetime(2027, 3, 27, 2, 30, tzinfo=BERLIN), horizon=FAR)
    assert found == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 28, 1, 30), utc(2027, 3, 29, 0, 30)]


def test_an_ambiguous_local_time_is_its_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 2027-10-31: the first (CEST, UTC+2) is the one booked.
    rule = parse_rrule("FREQ=DAILY;COUNT=3", zone=BERLIN)
    found = expand(rule, BERLIN, datetime(2027, 10, 30, 2, 30, tzinfo=BERLIN), horizon=FAR)
    assert found == [utc(2027, 10, 30, 0, 30), utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]


def test_weekly_local_time_holds_across_both_changes_in_new_york() -> None:
    rule = parse_rrule("FREQ=WEEKLY;BYDAY=TU;UNTIL=20271201T000000Z", zone=NEW_YORK)
    found = expand(rule, NEW_YORK, datetime(2027, 3, 2, 9, 0, tzinfo=NEW_YORK), horizon=FAR)
    assert {d.astimezone(NEW_YORK).strftime("%a %H:%M") for d in found} == {"Tue 09:00"}
    assert {d.hour for d in found} == {13, 14}  # EDT and EST


def test_monthly_rules_with_ordinals_and_setpos() -> None:
    last_weekday = parse_rrule("FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;COUNT=3", zone=BERLIN)
    found = expand(last_weekday, BERLIN, datetime(2027, 4, 30, 9, tzinfo=BERLIN), horizon=FAR)
    assert [d.astimezone(BERLIN).date().isoformat() for d in found] == [
        "2027-04-30",
        "2027-05-31",
        "2027-06-30",
    ]
    second_tuesday = parse_rrule("FREQ=MONTHLY;BYDAY=2TU;COUNT=2", zone=BERLIN)
    found = expand(second_tuesday, BERLIN, datetime(2027, 1, 12, 9, tzinfo=BERLIN), horizon=FAR)
    assert [d.astimezone(BERLIN).day for d in found] == [12, 9]


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1;COUNT=2",
        "FREQ=MONTHLY;BYMONTHDAY=1,2;BYSETPOS=3;COUNT=2",
        "FREQ=DAILY;BYSETPOS=2;BYDAY=MO;COUNT=2",
        "FREQ=WEEKLY;BYDAY=MO;BYSETPOS=2;COUNT=2",
    ],
)
def test_a_rule_matching_nothing_is_refused_before_expansion(rule: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_rrule(rule, zone=BERLIN)


def test_the_booking_window_bounds_every_rule() -> None:
    start = datetime(2027, 1, 4, 9, tzinfo=BERLIN)
    with pytest.raises(ValidationFailed, match="beyond the booking window"):
        expand(
            parse_rrule("FREQ=WEEKLY;COUNT=20", zone=BERLIN),
            BERLIN,
            start,
            horizon=start + timedelta(days=30),
        )
    with pytest.raises(ValidationFailed, match="UNTIL is beyond"):
        expand(
            parse_rrule("FREQ=WEEKLY;UNTIL=20290101T000000Z", zone=BERLIN),
            BERLIN,
            start,
            horizon=start + timedelta(days=30),
        )
    with pytest.raises(ValidationFailed, match="more than 366"):
        expand(parse_rrule("FREQ=DAILY;UNTIL=20290101T000000Z", zone=BERLIN), BERLIN, start, horizon=FAR)


def test_plan_leaves_out_exdates_and_refuses_what_is_not_an_instance() -> None:
    start = datetime(2027, 1, 4, 9, tzinfo=BERLIN)
    rule = parse_rrule("FREQ=WEEKLY;COUNT=3", zone=BERLIN)
    planned = plan_occurrences(
        rule,
        BERLIN,
        start=start,
        end=start + timedelta(hours=1),
        exdates=[start + timedelta(weeks=1)],
        horizon=FAR,
    )
    assert [s for s, _ in planned] == [start.astimezone(UTC), (start + timedelta(weeks=2)).astimezone(UTC)]
    with pytest.raises(ValidationFailed, match="not an occurrence"):
        plan_occurrences(
            rule,
            BERLIN,
            start=start,
            end=start + timedelta(hours=1),
            exdates=[start + timedelta(days=1)],
            horizon=FAR,
        )
    with pytest.raises(ValidationFailed, match="first occurrence"):
        plan_occurrences(
            parse_rrule("FREQ=WEEKLY;BYDAY=TU;COUNT=3", zone=BERLIN),
            BERLIN,
            start=start,
            end=start + timedelta(hours=1),
            exdates=[],
            horizon=FAR,
        )
    with pytest.raises(ValidationFailed, match="overlap one another"):
        plan_occurrences(
            parse_rrule("FREQ=DAILY;COUNT=3", zone=BERLIN),
            BERLIN,
            start=start,
            end=start + timedelta(hours=25),
            exdates=[],
            horizon=FAR,
        )


def test_instances_of_a_stored_rule_match_its_expansion() -> None:
    start = datetime(2027, 3, 1, 9, tzinfo=BERLIN)
    rule = parse_rrule("FREQ=WEEKLY;BYDAY=MO,TH;COUNT=9", zone=BERLIN)
    assert instances(rule.text(), "Europe/Berlin", start) == expand(rule, BERLIN, start, horizon=FAR)


BASE = datetime(2030, 1, 1, tzinfo=UTC)
ranges = st.tuples(st.integers(0, 50), st.integers(1, 12)).map(
    lambda t: (BASE + timedelta(minutes=5 * t[0]), BASE + timedelta(minutes=5 * (t[0] + t[1])))
)


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 3),
    existing=st.lists(ranges, max_size=6),
    wanted=st.lists(ranges, min_size=1, max_size=6),
)
def test_capacity_conflicts_agree_with_a_minute_by_minute_oracle(
    capacity: int, existing: list[tuple[datetime, datetime]], wanted: list[tuple[datetime, datetime]]
) -> None:
    held = [(uuid.uuid4(), s, e) for s, e in existing]
    refused = capacity_conflicts(capacity, held, wanted)
    taken: list[tuple[datetime, datetime]] = [(s, e) for _, s, e in held]
    for i, (s, e) in enumerate(wanted):
        minute = s
        fits = True
        while minute < e:
            if sum(1 for a, b in taken if a <= minute < b) >= capacity:
                fits = False
                break
            minute += timedelta(minutes=1)
        assert (i not in refused) == fits, (i, s, e)
        if fits:
            taken.append((s, e))
        else:
            ids = set(refused[i])
            assert ids <= {bid for bid, _, _ in held}
