"""The availability rules (actors/domain/availability.py), pure logic: DST transitions by hand, then
property-based runs against a brute-force oracle that looks at every minute."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.domain.availability import (
    Busy,
    Hours,
    LocalInterval,
    SlotRules,
    aligned,
    full_spans,
    local_instant,
    next_slot,
    slots,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
NINE_TO_FIVE = {d: (LocalInterval(time(9), time(17)),) for d in range(1, 6)}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def labels(found: list[tuple[datetime, datetime]], zone: ZoneInfo) -> list[str]:
    return [s.astimezone(zone).strftime("%m-%d %H:%M%z") for s, _ in found]


# --- DST by hand ------------------------------------------------------------------------------------------


def test_a_weekly_0900_stays_0900_local_across_both_berlin_transitions() -> None:
    hours = Hours(BERLIN, weekly={7: (LocalInterval(time(9), time(10)),)})  # Sundays 09:00-10:00
    rules = SlotRules(duration=HOUR, step=HOUR)
    spring = slots(hours, Busy([]), rules, utc(2027, 3, 21), utc(2027, 4, 5))
    assert labels(spring, BERLIN) == ["03-21 09:00+0100", "03-28 09:00+0200", "04-04 09:00+0200"]
    assert [s for s, _ in spring] == [utc(2027, 3, 21, 8), utc(2027, 3, 28, 7), utc(2027, 4, 4, 7)]
    autumn = slots(hours, Busy([]), rules, utc(2027, 10, 24), utc(2027, 11, 1))
    assert [s for s, _ in autumn] == [utc(2027, 10, 24, 7), utc(2027, 10, 31, 8)]


def test_the_spring_forward_gap_is_never_offered_and_the_night_is_an_hour_shorter() -> None:
    hours = Hours(BERLIN)  # open around the clock
    found = slots(
        hours,
        Busy([]),
        SlotRules(duration=30 * MINUTE, step=30 * MINUTE),
        utc(2027, 3, 27, 23),
        utc(2027, 3, 28, 2),
    )
    assert labels(found, BERLIN) == [
        "03-28 00:00+0100", "03-28 00:30+0100", "03-28 01:00+0100", "03-28 01:30+0100",
        "03-28 03:00+0200", "03-28 03:30+0200",
    ]  # fmt: skip


def test_the_fall_back_hour_is_offered_once() -> None:
    found = slots(
        Hours(BERLIN),
        Busy([]),
        SlotRules(duration=HOUR, step=HOUR),
        utc(2027, 10, 30, 22),
        utc(2027, 10, 31, 3),
    )
    assert labels(found, BERLIN) == [
        "10-31 00:00+0200", "10-31 01:00+0200", "10-31 02:00+0200", "10-31 03:00+0100",
    ]  # fmt: skip
    # The second 02:00 (01:00 UTC) is not a grid time of its own.
    assert utc(2027, 10, 31, 1) not in [s for s, _ in found]


def test_inside_the_repeated_hour_the_next_grid_time_is_after_it() -> None:
    # 01:30 UTC on 2027-10-31 is the second 02:30 in Berlin: its label was offered at 00:30 UTC already.
    rules = SlotRules(duration=30 * MINUTE, step=30 * MINUTE)
    assert aligned(BERLIN, rules.step, utc(2027, 10, 31, 1, 30)) == utc(2027, 10, 31, 2)
    found = slots(Hours(BERLIN), Busy([]), rules, utc(2027, 10, 31, 1, 10), utc(2027, 10, 31, 3))
    assert labels(found, BERLIN) == ["10-31 03:00+0100", "10-31 03:30+0100"]
    # Busy until the middle of the second 02:xx hour: next is the first label after the repeat.
    busy = Busy([(utc(2027, 10, 31, 0), utc(2027, 10, 31, 1, 15))])
    assert next_slot(Hours(BERLIN), busy, rules, utc(2027, 10, 31, 0), utc(2027, 11, 1)) == (
        utc(2027, 10, 31, 2),
        utc(2027, 10, 31, 2, 30),
    )


def test_hours_boundaries_in_the_gap_take_the_offset_from_before_it() -> None:
    # RFC 5545's rule: 02:30 on the spring-forward night means 03:30 local.
    assert local_instant(date(2027, 3, 28), time(2, 30), BERLIN) == utc(2027, 3, 28, 1, 30)
    # An ambiguous time is its first occurrence.
    assert local_instant(date(2027, 10, 31), time(2, 30), BERLIN) == utc(2027, 10, 31, 0, 30)


def test_new_york_lord_howe_and_kathmandu() -> None:
    ny = Hours(NEW_YORK, weekly={7: (LocalInterval(time(1), time(4)),)})
    found = slots(ny, Busy([]), SlotRules(duration=HOUR, step=HOUR), utc(2027, 3, 14), utc(2027, 3, 15))
    assert labels(found, NEW_YORK) == ["03-14 01:00-0500", "03-14 03:00-0400"]  # 02:00 does not exist
    # Lord Howe moves its clocks by 30 minutes: 02:00 → 02:30 on 2027-10-03.
    lh = slots(
        Hours(LORD_HOWE),
        Busy([]),
        SlotRules(duration=30 * MINUTE, step=30 * MINUTE),
        utc(2027, 10, 2, 14),
        utc(2027, 10, 2, 16),
    )
    # 14:00-16:00 UTC is 00:30 to 02:00 standard time, then 02:30 daylight time: 02:00 never happens.
    assert labels(lh, LORD_HOWE) == [
        "10-03 00:30+1030",
        "10-03 01:00+1030",
        "10-03 01:30+1030",
        "10-03 02:30+1100",
    ]
    # Kathmandu (+05:45): a local 09:00 grid is 03:15 UTC.
    kt = Hours(KATHMANDU, weekly={1: (LocalInterval(time(9), time(11)),)})
    found = slots(kt, Busy([]), SlotRules(duration=HOUR, step=HOUR), utc(2027, 3, 1), utc(2027, 3, 2))
    assert [s for s, _ in found] == [utc(2027, 3, 1, 3, 15), utc(2027, 3, 1, 4, 15)]


def test_capacity_counts_the_maximum_overlap_not_the_bookings_touching_it() -> None:
    nine = utc(2027, 1, 4, 9)
    three = [(nine, nine + HOUR), (nine + HOUR, nine + 2 * HOUR), (nine + HOUR / 2, nine + 1.5 * HOUR)]
    assert full_spans(three, 3) == []
    assert full_spans(three, 2) == [(nine + HOUR / 2, nine + 1.5 * HOUR)]
    rules = SlotRules(duration=2 * HOUR, step=HOUR)
    assert slots(Hours(ZoneInfo("UTC")), Busy.of(full_spans(three, 3)), rules, nine, nine + MINUTE) == [
        (nine, nine + 2 * HOUR)
    ]
    assert slots(Hours(ZoneInfo("UTC")), Busy.of(full_spans(three, 2)), rules, nine, nine + MINUTE) == []


def test_next_skips_a_closed_weekend_and_a_holiday_override() -> None:
    friday = date(2027, 1, 8)
    hours = Hours(BERLIN, weekly=NINE_TO_FIVE, overrides={date(2027, 1, 11): ()})  # Monday closed
    # Friday is full from 15:00 to the end of the day; the next free hour is Tuesday 09:00 local.
    busy = Busy([(local_instant(friday, time(15), BERLIN), local_instant(friday, time(17), BERLIN))])
    rules = SlotRules(duration=2 * HOUR, step=30 * MINUTE)
    found = next_slot(hours, busy, rules, local_instant(friday, time(14), BERLIN), utc(2027, 3, 1))
    assert found is not None and labels([found], BERLIN) == ["01-12 09:00+0100"]


def test_next_with_the_first_gap_far_out_jumps_instead_of_walking() -> None:
    start = utc(2027, 1, 1)
    # Back-to-back hour-long bookings for 90 days, then free time.
    booked = [(start + i * HOUR, start + (i + 1) * HOUR) for i in range(90 * 24)]
    busy = Busy.of(booked)
    found = next_slot(
        Hours(ZoneInfo("UTC")),
        busy,
        SlotRules(duration=HOUR, step=15 * MINUTE),
        start,
        start + timedelta(days=365),
    )
    assert found == (start + timedelta(days=90), start + timedelta(days=90) + HOUR)


def test_notice_and_advance_bound_the_starts() -> None:
    now = utc(2027, 1, 4, 8, 7)
    rules = SlotRules(duration=HOUR, step=HOUR, earliest=now + 2 * HOUR, latest_start=now + 5 * HOUR)
    found = slots(Hours(ZoneInfo("UTC")), Busy([]), rules, now, now + timedelta(days=1))
    assert [s.hour for s, _ in found] == [11, 12, 13]


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK, LORD_HOWE, KATHMANDU])
def test_aligned_is_idempotent_on_grid_times(zone: ZoneInfo) -> None:
    at = utc(2027, 3, 1)
    for _ in range(200):
        t = aligned(zone, 15 * MINUTE, at)
        assert aligned(zone, 15 * MINUTE, t) == t
        at = t + MINUTE


# --- the oracle -------------------------------------------------------------------------------------------

ZONES = [BERLIN, NEW_YORK, LORD_HOWE, KATHMANDU, ZoneInfo("UTC")]
# Windows around real transitions (and one with none), three days each.
STARTS = [
    utc(2027, 3, 27),
    utc(2027, 10, 30),
    utc(2027, 3, 13),
    utc(2027, 11, 6),
    utc(2027, 4, 3),
    utc(2027, 10, 2),
    utc(2027, 6, 1),
]
SPAN_MINUTES = 3 * 24 * 60


@st.composite
def local_intervals(draw: st.DrawFn) -> tuple[LocalInterval, ...]:
    count = draw(st.integers(0, 3))
    cuts = sorted(
        draw(st.lists(st.integers(0, 24 * 4 - 1), min_size=2 * count, max_size=2 * count, unique=True))
    )
    out = []
    for a, b in zip(cuts[::2], cuts[1::2], strict=True):
        out.append(LocalInterval(time(a // 4, a % 4 * 15), None if b == 24 * 4 else time(b // 4, b % 4 * 15)))
    return tuple(out)


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    zone = draw(st.sampled_from(ZONES))
    start = draw(st.sampled_from(STARTS))
    weekly = None if draw(st.booleans()) else {d: draw(local_intervals()) for d in range(1, 8)}
    days = [(start + timedelta(days=i)).date() for i in range(-1, 4)]
    overrides = {
        d: draw(local_intervals()) for d in draw(st.lists(st.sampled_from(days), max_size=2, unique=True))
    }
    capacity = draw(st.integers(1, 3))
    booked = []
    for _ in range(draw(st.integers(0, 12))):
        s = draw(st.integers(-120, SPAN_MINUTES))
        booked.append((start + s * MINUTE, start + (s + draw(st.integers(1, 240))) * MINUTE))
    mine = []
    for _ in range(draw(st.integers(0, 2))):
        s = draw(st.integers(0, SPAN_MINUTES))
        mine.append((start + s * MINUTE, start + (s + draw(st.integers(1, 120))) * MINUTE))
    rules = SlotRules(
        duration=draw(st.sampled_from([15, 30, 45, 60, 90, 240])) * MINUTE,
        step=draw(st.sampled_from([5, 15, 30, 45, 60, 90])) * MINUTE,
        buffer_before=draw(st.sampled_from([0, 10, 30])) * MINUTE,
        buffer_after=draw(st.sampled_from([0, 5, 60])) * MINUTE,
        earliest=start + draw(st.integers(0, 600)) * MINUTE,
        latest_start=start + draw(st.integers(600, SPAN_MINUTES)) * MINUTE,
    )
    return {"zone": zone, "start": start, "weekly": weekly, "overrides": overrides, "capacity": capacity,
            "booked": booked, "mine": mine, "rules": rules}  # fmt: skip


def oracle(sc: dict) -> list[tuple[datetime, datetime]]:
    """Every minute looked at: open by the day's intervals (boundaries by local_instant, the RFC 5545
    rule tested above), seats counted per minute, the grid found by reading each minute's wall clock."""
    zone, start, rules = sc["zone"], sc["start"], sc["rules"]
    hours = Hours(zone, weekly=sc["weekly"], overrides=sc["overrides"])
    lo, hi = -2 * 24 * 60, SPAN_MINUTES + 2 * 24 * 60
    at = [start + m * MINUTE for m in range(lo, hi)]
    open_ = set()
    for i in range(-3, 6):
        day = (start + timedelta(days=i)).astimezone(zone).date()
        for iv in hours.intervals_on(day):
            s = local_instant(day, iv.start, zone)
            e = (
                local_instant(day + timedelta(days=1), time(0), zone)
                if iv.end is None
                else local_instant(day, iv.end, zone)
            )
            open_.update(t for t in at if s <= t < e)
    seats = {t: sum(1 for s, e in sc["booked"] if s <= t < e) for t in at}
    mine = {t for t in at if any(s <= t < e for s, e in sc["mine"])}
    seen_labels = set()
    found = []
    for t in at[-lo : -lo + SPAN_MINUTES]:
        local = t.astimezone(zone)
        label = (local.date(), local.hour, local.minute)
        first = label not in seen_labels
        seen_labels.add(label)
        if not first or (local.hour * 60 + local.minute) % int(rules.step / MINUTE):
            continue
        if not rules.earliest <= t <= rules.latest_start:
            continue
        d = int(rules.duration / MINUTE)
        if not all(t + k * MINUTE in open_ for k in range(d)):
            continue
        occ = range(-int(rules.buffer_before / MINUTE), d + int(rules.buffer_after / MINUTE))
        if any(seats[t + k * MINUTE] >= sc["capacity"] for k in occ):
            continue
        if any(t + k * MINUTE in mine for k in range(d)):  # the caller's own time: no buffers
            continue
        found.append((t, t + rules.duration))
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_slots_and_next_agree_with_the_oracle(sc: dict) -> None:
    hours = Hours(sc["zone"], weekly=sc["weekly"], overrides=sc["overrides"])
    busy, own = Busy.of(full_spans(sc["booked"], sc["capacity"])), Busy.of(sc["mine"])
    end = sc["start"] + SPAN_MINUTES * MINUTE
    expected = oracle(sc)
    assert slots(hours, busy, sc["rules"], sc["start"], end, own) == expected
    assert next_slot(hours, busy, sc["rules"], sc["start"], end, own) == (expected[0] if expected else None)


def test_zones_resolve_from_the_pinned_tzdata_without_system_zone_files() -> None:
    """A slim image has no /usr/share/zoneinfo: zoneinfo then reads the tzdata package the lock pins."""
    import os
    import subprocess
    import sys

    probe = (
        "import zoneinfo, datetime as d, tzdata; "
        "z = zoneinfo.ZoneInfo('Europe/Berlin'); "
        "print(tzdata.IANA_VERSION, d.datetime(2027, 3, 28, 12, tzinfo=z).utcoffset())"
    )
    env = {**os.environ, "PYTHONTZPATH": os.devnull}  # no system zone files at all
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    version, offset = done.stdout.split()
    assert version.startswith("20") and offset == "2:00:00"
