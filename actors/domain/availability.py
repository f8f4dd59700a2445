"""Availability: when a resource is open and free. Pure rules, no I/O (storage feeds them).

Every computation is on UTC instants; local wall-clock rules (working hours, the slot grid) are turned
into instants with the zone's own rules (zoneinfo), one local date at a time:

- A boundary of working hours (`09:00`) is resolved as RFC 5545 resolves a local DTSTART: a time in a
  spring-forward gap takes the offset from before the gap (02:30 on a 02:00→03:00 night is 03:30 local),
  an ambiguous fall-back time is its first occurrence.
- Slot starts lie on a grid of `step` minutes from local midnight. A grid time that does not exist
  (the gap) is never offered; an ambiguous one is offered once, at its first occurrence.
- Busy time is what existing bookings occupy, buffers included; with capacity N an instant is *full*
  when N of them cover it. A slot is open when what it would occupy (its own buffers included) touches
  no full instant, no time the caller is busy elsewhere, and lies inside one open stretch of hours.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Span = tuple[datetime, datetime]  # a half-open [start, end) of UTC instants

DAY = timedelta(days=1)
_LAST = datetime.max.replace(tzinfo=UTC)  # sorts after any span starting at the same instant
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class LocalInterval:
    """A stretch of one local day: `end` None means midnight at the end of the day (24:00)."""

    start: time
    end: time | None

    def __post_init__(self) -> None:
        if self.end is not None and self.end <= self.start:
            raise ValueError("an interval must end after it starts")


@dataclass(frozen=True, slots=True)
class Hours:
    """Working hours in `zone`: weekly intervals by ISO weekday (1 = Monday … 7 = Sunday), and date
    overrides that replace a day's intervals (an empty tuple: closed that day). `weekly` None: open
    around the clock except where an override says otherwise."""

    zone: ZoneInfo
    weekly: Mapping[int, tuple[LocalInterval, ...]] | None = None
    overrides: Mapping[date, tuple[LocalInterval, ...]] = field(default_factory=dict)

    def intervals_on(self, day: date) -> tuple[LocalInterval, ...]:
        if day in self.overrides:
            return self.overrides[day]
        if self.weekly is None:
            return (LocalInterval(time(0), None),)
        return self.weekly.get(day.isoweekday(), ())

    def open_spans(self, start: datetime, end: datetime) -> Iterator[Span]:
        """The open stretches meeting [start, end), merged across midnight, clipped to it, in order."""
        pending: Span | None = None
        day = (
            start.astimezone(self.zone).date() - DAY
        )  # an interval of the day before may reach past midnight
        last = end.astimezone(self.zone).date() + DAY
        while day <= last:
            for interval in self.intervals_on(day):
                span = (
                    local_instant(day, interval.start, self.zone),
                    _end_instant(day, interval.end, self.zone),
                )
                if span[1] <= span[0]:
                    continue  # an interval inside a spring-forward gap is no time at all
                if pending is not None and span[0] <= pending[1]:
                    pending = (pending[0], max(pending[1], span[1]))
                    continue
                if pending is not None:
                    clipped = _clip(pending, start, end)
                    if clipped:
                        yield clipped
                    if pending[0] >= end:
                        return
                pending = span
            day += DAY
        if pending is not None and (clipped := _clip(pending, start, end)):
            yield clipped

    def contains(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end) lies inside one open stretch."""
        return any(s <= start and end <= e for s, e in self.open_spans(start, end))


def local_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time, the RFC 5545 way: a gap time takes the offset from before
    the gap, an ambiguous time its first occurrence (fold=0 in zoneinfo gives both)."""
    return datetime.combine(day, wall, tzinfo=zone).replace(fold=0).astimezone(UTC)


def exists(day: date, wall: time, zone: ZoneInfo) -> bool:
    """Whether the wall time occurs on that day (not inside a spring-forward gap)."""
    local = datetime.combine(day, wall, tzinfo=zone)
    return local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None)


def _end_instant(day: date, wall: time | None, zone: ZoneInfo) -> datetime:
    return local_instant(day + DAY, time(0), zone) if wall is None else local_instant(day, wall, zone)


def _clip(span: Span, start: datetime, end: datetime) -> Span | None:
    s, e = max(span[0], start), min(span[1], end)
    return (s, e) if s < e else None


# --- busy time -------------------------------------------------------------------------------------------


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, merged, non-empty spans (touching ones join)."""
    merged: list[Span] = []
    for s, e in sorted(spans):
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def full_spans(occupied: Iterable[Span], capacity: int) -> list[Span]:
    """Where at least `capacity` of the occupied spans overlap: the instants with no seat left."""
    events: list[tuple[datetime, int]] = []
    for s, e in occupied:
        if s < e:
            events.append((s, 1))
            events.append((e, -1))
    events.sort(key=lambda ev: (ev[0], ev[1]))  # ends before starts at the same instant: half-open
    full: list[Span] = []
    count, opened = 0, None
    for at, delta in events:
        count += delta
        if delta > 0 and count == capacity:
            opened = at
        elif delta < 0 and count == capacity - 1 and opened is not None:
            if opened < at:
                full.append((opened, at))
            opened = None
    return merge(full)


@dataclass(frozen=True, slots=True)
class Busy:
    """Blocked time, as merged sorted spans, with a fast 'does this span touch it' check."""

    spans: Sequence[Span]

    @classmethod
    def of(cls, *groups: Iterable[Span]) -> Busy:
        return cls(merge(span for group in groups for span in group))

    def first_hit(self, start: datetime, end: datetime) -> Span | None:
        """The first blocked span that [start, end) overlaps, or None."""
        i = bisect.bisect_right(self.spans, (start, _LAST))
        for j in (i - 1, i):
            if 0 <= j < len(self.spans):
                s, e = self.spans[j]
                if s < end and start < e:
                    return self.spans[j]
        return None


# --- slots -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotRules:
    duration: timedelta
    step: timedelta
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    earliest: datetime | None = None  # now + minimum notice: no slot starts before
    latest_start: datetime | None = None  # now + maximum advance: no slot starts after

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0) or self.step <= timedelta(0):
            raise ValueError("duration and step must be positive")
        if self.step % MINUTE or self.step > DAY:
            raise ValueError("step must be whole minutes, at most a day")

    def window(self, start: datetime, end: datetime) -> Span:
        """[start, end) narrowed to the starts these rules allow."""
        if self.earliest is not None:
            start = max(start, self.earliest)
        if self.latest_start is not None:
            end = min(end, self.latest_start + timedelta.resolution)
        return start, end

    def occupies(self, at: datetime) -> Span:
        """What a booking starting at `at` takes of the resource: the slot and its buffers."""
        return at - self.buffer_before, at + self.duration + self.buffer_after


def aligned(zone: ZoneInfo, step: timedelta, at: datetime) -> datetime:
    """The first grid instant at or after `at`: a local wall time that is a whole number of `step`s
    after local midnight and exists that day; an ambiguous label counts at its first occurrence only,
    so inside the repeated fall-back hour the next label after it is taken."""
    minutes = int(step / MINUTE)
    local = at.astimezone(zone)
    day = local.date()
    elapsed = local.hour * 60 + local.minute + (1 if local.second or local.microsecond else 0)
    k = -(-elapsed // minutes) * minutes
    while True:
        if k >= 24 * 60:
            day, k = day + DAY, 0
        wall = time(k // 60, k % 60)
        if exists(day, wall, zone):
            instant = local_instant(day, wall, zone)
            if instant >= at:
                return instant
        k += minutes


def slots(
    hours: Hours, busy: Busy, rules: SlotRules, start: datetime, end: datetime, own: Busy = Busy(())
) -> list[Span]:
    """Every open slot starting in [start, end), in order. `busy` is the resource's full time, met by
    what a slot occupies (buffers included); `own` is the caller's own booked time, met by the slot itself
    (the per-user rule knows no buffers)."""
    lower, upper = rules.window(start, end)
    if lower >= upper:
        return []
    spans = list(hours.open_spans(lower, upper + rules.duration))
    found: list[Span] = []
    at = aligned(hours.zone, rules.step, lower)
    while at < upper:
        slot_end = at + rules.duration
        if (
            _fits(spans, at, slot_end)
            and busy.first_hit(*rules.occupies(at)) is None
            and own.first_hit(at, slot_end) is None
        ):
            found.append((at, slot_end))
        at = aligned(hours.zone, rules.step, at + MINUTE)
    return found


def _fits(spans: Sequence[Span], start: datetime, end: datetime) -> bool:
    i = bisect.bisect_right(spans, (start, _LAST)) - 1
    return i >= 0 and spans[i][0] <= start and end <= spans[i][1]


class _Timeline:
    """Open stretches from a start onwards, computed a month at a time as a walk needs them."""

    CHUNK = timedelta(days=32)

    def __init__(self, hours: Hours, start: datetime, horizon: datetime) -> None:
        self._hours, self._horizon = hours, horizon
        self._spans: list[Span] = []
        self._until = start

    def _extend(self) -> bool:
        if self._until >= self._horizon:
            return False
        until = min(self._until + self.CHUNK, self._horizon)
        self._spans = merge([*self._spans, *self._hours.open_spans(self._until, until)])
        self._until = until
        return True

    def stretch(self, at: datetime, length: timedelta) -> Span | None:
        """The first open stretch, clipped to start no earlier than `at`, that is at least `length`
        long; None when there is none before the horizon."""
        while True:
            i = max(bisect.bisect_right(self._spans, (at, _LAST)) - 1, 0)
            for s, e in itertools.islice(self._spans, i, None):
                begin = max(s, at)
                if e - begin >= length:
                    return begin, e
            # Nothing long enough yet; the last stretch may go on into the next month.
            if not self._extend():
                return None


def next_slot(
    hours: Hours, busy: Busy, rules: SlotRules, after: datetime, horizon: datetime, own: Busy = Busy(())
) -> Span | None:
    """The earliest open slot starting in [after, horizon). It never walks the grid through busy or
    closed time: a candidate that meets busy time jumps past it, one outside hours to the next open
    stretch long enough to hold it, so the cost follows the busy and closed stretches passed, not the
    number of grid times."""
    at, horizon = rules.window(after, horizon)
    timeline = _Timeline(hours, at, horizon + rules.duration)
    while at < horizon:
        candidate = aligned(hours.zone, rules.step, at)
        if candidate >= horizon:
            return None
        stretch = timeline.stretch(candidate, rules.duration)
        if stretch is None:
            return None
        if candidate < stretch[0]:
            at = stretch[0]
            continue
        hit = busy.first_hit(*rules.occupies(candidate))
        if hit is not None:
            at = max(candidate + MINUTE, hit[1] + rules.buffer_before)
            continue
        mine = own.first_hit(candidate, candidate + rules.duration)
        if mine is not None:
            at = max(candidate + MINUTE, mine[1])
            continue
        return candidate, candidate + rules.duration
    return None


# --- the stored documents ---------------------------------------------------------------------------------
# weekly: [{"weekday": 1-7 (ISO, 1 = Monday), "start": "HH:MM", "end": "HH:MM" or "24:00"}] or None;
# overrides: [{"date": "YYYY-MM-DD", "intervals": [{"start", "end"}]}], an empty list closing the day.

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def parse_wall(text: str) -> time | None:
    """ "HH:MM" as a wall time; "24:00" (midnight at the day's end) as None."""
    if text == "24:00":
        return None
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _interval(doc: Mapping[str, str]) -> LocalInterval:
    start = parse_wall(doc["start"])
    if start is None:
        raise ValueError("an interval cannot start at 24:00")
    return LocalInterval(start, parse_wall(doc["end"]))


def _day(intervals: Iterable[LocalInterval]) -> tuple[LocalInterval, ...]:
    ordered = sorted(intervals, key=lambda i: i.start)
    for before, after in itertools.pairwise(ordered):
        if before.end is None or before.end > after.start:
            raise ValueError(f"intervals {before.start:%H:%M} and {after.start:%H:%M} overlap")
    return tuple(ordered)


def hours_of(
    zone: ZoneInfo, weekly: Sequence[Mapping[str, Any]] | None, overrides: Sequence[Mapping[str, Any]] = ()
) -> Hours:
    """The Hours of stored (or validated) documents; ValueError names what is wrong."""
    week: dict[int, tuple[LocalInterval, ...]] | None = None
    if weekly is not None:
        by_day: dict[int, list[LocalInterval]] = {}
        for doc in weekly:
            by_day.setdefault(int(doc["weekday"]), []).append(_interval(doc))
        week = {d: _day(v) for d, v in by_day.items()}
    days: dict[date, tuple[LocalInterval, ...]] = {}
    for doc in overrides:
        day = date.fromisoformat(doc["date"])
        if day in days:
            raise ValueError(f"{day} has two overrides")
        days[day] = _day(_interval(i) for i in doc["intervals"])
    return Hours(zone, weekly=week, overrides=days)


def describe(hours: Hours, day: date | None = None) -> str:
    """The hours in words, for an error message: the week, and `day`'s override if it has one."""
    if day is not None and day in hours.overrides:
        found = hours.overrides[day]
        return f"on {day}: " + (", ".join(_span_text(i) for i in found) or "closed")
    if hours.weekly is None:
        return "open around the clock"
    parts = [
        f"{WEEKDAYS[d - 1]} " + ", ".join(_span_text(i) for i in hours.weekly[d])
        for d in sorted(hours.weekly)
        if hours.weekly[d]
    ]
    return "; ".join(parts) or "closed every day"


def _span_text(interval: LocalInterval) -> str:
    end = "24:00" if interval.end is None else f"{interval.end:%H:%M}"
    return f"{interval.start:%H:%M}-{end}"
