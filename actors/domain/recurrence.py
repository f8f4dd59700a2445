"""Recurrence rules (RFC 5545 RRULE, a subset): parsing, the normal form, expansion. Pure: no I/O.

The subset: FREQ=DAILY|WEEKLY|MONTHLY, INTERVAL, BYDAY, BYMONTHDAY, BYSETPOS, WKST, and exactly one of
COUNT or UNTIL. Anything else is refused with a message naming the part, before python-dateutil sees
the rule. Expansion is python-dateutil's `rrule` on the series' local wall time: dtstart carries the
series' ZoneInfo, so a weekly 09:00 Europe/Berlin series stays at 09:00 local across DST. A local time
that falls in a DST gap takes the offset from before the gap and an ambiguous one is its first
occurrence (zoneinfo's fold=0, which is RFC 5545's rule, section 3.3.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Literal
from zoneinfo import ZoneInfo

from dateutil import rrule as du

from actors.domain.errors import FieldError, ValidationFailed

MAX_OCCURRENCES = 366
MAX_RULE_CHARS = 500
MAX_EXDATES = MAX_OCCURRENCES
FREQS: dict[str, Literal[0, 1, 2, 3, 4, 5, 6]] = {
    "DAILY": du.DAILY,
    "WEEKLY": du.WEEKLY,
    "MONTHLY": du.MONTHLY,
}
WEEKDAYS = {"MO": du.MO, "TU": du.TU, "WE": du.WE, "TH": du.TH, "FR": du.FR, "SA": du.SA, "SU": du.SU}
_ORDER = ("FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "BYSETPOS", "WKST", "COUNT", "UNTIL")
_BYDAY = re.compile(r"^([+-]?)(\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
_INT = re.compile(r"^[+-]?\d{1,4}$")
_UNTIL = re.compile(r"^(\d{8})(?:T(\d{6})(Z?))?$")
FIELD = "recurrence.rrule"


def _bad(message: str, field: str = FIELD) -> ValidationFailed:
    return ValidationFailed(f"{field} {message}", [FieldError(field, message)])


@dataclass(frozen=True, slots=True)
class Rule:
    freq: str
    interval: int = 1
    byday: tuple[str, ...] = ()
    bymonthday: tuple[int, ...] = ()
    bysetpos: tuple[int, ...] = ()
    wkst: str | None = None
    count: int | None = None
    until: datetime | None = None  # UTC

    def text(self) -> str:
        """The normal form stored and served (UNTIL in UTC, parts in a fixed order)."""
        parts = {
            "FREQ": self.freq,
            "INTERVAL": str(self.interval),
            "BYDAY": ",".join(self.byday),
            "BYMONTHDAY": ",".join(map(str, self.bymonthday)),
            "BYSETPOS": ",".join(map(str, self.bysetpos)),
            "WKST": self.wkst or "",
            "COUNT": str(self.count) if self.count is not None else "",
            "UNTIL": self.until.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") if self.until else "",
        }
        return ";".join(f"{k}={parts[k]}" for k in _ORDER if parts[k])

    def ending(self, *, count: int | None = None, until: datetime | None = None) -> Rule:
        return replace(self, count=count, until=until)


def _ints(key: str, value: str, lo: int, hi: int) -> tuple[int, ...]:
    out = []
    for item in value.split(","):
        if not _INT.match(item) or not (lo <= abs(int(item)) <= hi):
            raise _bad(f"{key} takes comma-separated integers from {lo} to {hi} (or their negatives)")
        out.append(int(item))
    return tuple(out)


def parse_rrule(text: object, *, zone: ZoneInfo) -> Rule:
    """The rule, or a 400 naming what is wrong. A date-only UNTIL is the end of that day in `zone`."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("must be an RRULE such as FREQ=WEEKLY;BYDAY=MO;COUNT=10")
    if len(text) > MAX_RULE_CHARS:
        raise _bad(f"may be at most {MAX_RULE_CHARS} characters")
    body = text.strip()
    if body[:6].upper() == "RRULE:":
        body = body[6:]
    parts: dict[str, str] = {}
    for chunk in body.split(";"):
        key, sep, value = chunk.partition("=")
        key = key.strip().upper()
        if not sep or not value:
            raise _bad(f"part {chunk[:40]!r} is not NAME=VALUE")
        if key not in _ORDER:
            raise _bad(f"{key[:20]} is not supported (supported: {', '.join(_ORDER)})")
        if key in parts:
            raise _bad(f"{key} is given twice")
        parts[key] = value.strip().upper()
    freq = parts.get("FREQ")
    if freq not in FREQS:
        raise _bad("FREQ must be DAILY, WEEKLY or MONTHLY")
    if ("COUNT" in parts) == ("UNTIL" in parts):
        raise _bad("needs exactly one of COUNT or UNTIL (an unbounded series cannot be booked)")
    interval = _ints("INTERVAL", parts.get("INTERVAL", "1"), 1, 999)[0]
    if interval < 1:
        raise _bad("INTERVAL must be a positive integer")
    byday: list[str] = []
    for item in parts.get("BYDAY", "").split(",") if "BYDAY" in parts else ():
        m = _BYDAY.match(item)
        if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 5):
            raise _bad("BYDAY takes weekdays MO..SU, optionally with an ordinal such as 1MO or -1FR")
        if m.group(2) and freq != "MONTHLY":
            raise _bad("BYDAY ordinals such as 1MO need FREQ=MONTHLY")
        byday.append(f"{m.group(1)}{m.group(2) or ''}{m.group(3)}")
    bymonthday = _ints("BYMONTHDAY", parts["BYMONTHDAY"], 1, 31) if "BYMONTHDAY" in parts else ()
    if bymonthday and freq == "WEEKLY":
        raise _bad("BYMONTHDAY does not apply to FREQ=WEEKLY")
    bysetpos = _ints("BYSETPOS", parts["BYSETPOS"], 1, MAX_OCCURRENCES) if "BYSETPOS" in parts else ()
    if bysetpos and not (byday or bymonthday):
        raise _bad("BYSETPOS needs BYDAY or BYMONTHDAY")
    limit = {"DAILY": 1, "WEEKLY": max(len(byday), 1), "MONTHLY": 31}[freq]
    if any(abs(p) > limit for p in bysetpos):
        raise _bad(f"BYSETPOS beyond the {limit} instance(s) a {freq.lower()} period can hold")
    if freq == "MONTHLY" and (byday or bymonthday) and not _some_month_matches(byday, bymonthday, bysetpos):
        raise _bad("matches no day in any month")
    wkst = parts.get("WKST")
    if wkst is not None and wkst not in WEEKDAYS:
        raise _bad("WKST must be a weekday MO..SU")
    count = None
    if "COUNT" in parts:
        if not parts["COUNT"].isdigit() or len(parts["COUNT"]) > 9:
            raise _bad("COUNT must be a positive integer")
        count = int(parts["COUNT"])
        if not 1 <= count <= MAX_OCCURRENCES:
            raise _bad(f"COUNT must be from 1 to {MAX_OCCURRENCES} (a series has at most that many)")
    until = _until(parts["UNTIL"], zone) if "UNTIL" in parts else None
    return Rule(freq, interval, tuple(byday), bymonthday, bysetpos, wkst, count, until)


def _some_month_matches(byday: list[str], bymonthday: tuple[int, ...], bysetpos: tuple[int, ...]) -> bool:
    """Whether a monthly rule selects a day in at least one kind of month (28-31 days, any first
    weekday). dateutil looks for the next instance up to the year 9999 before giving up on a rule that
    never matches (half a second of CPU), so such a rule is refused here, by the same RFC 5545 reading."""
    names = list(WEEKDAYS)
    for length in (28, 29, 30, 31):
        for first in range(7):
            days = set(range(1, length + 1))
            if bymonthday:
                days &= {d if d > 0 else length + 1 + d for d in bymonthday}
            if byday:
                chosen: set[int] = set()
                for item in byday:
                    m = _BYDAY.match(item)
                    assert m is not None  # noqa: S101
                    same = [d for d in range(1, length + 1) if (first + d - 1) % 7 == names.index(m.group(3))]
                    if not m.group(2):
                        chosen.update(same)
                    else:
                        n = int(f"{m.group(1)}{m.group(2)}")
                        if n <= len(same) and -n <= len(same):
                            chosen.add(same[n - 1] if n > 0 else same[n])
                days &= chosen
            ordered = sorted(days)
            if ordered and (not bysetpos or any(abs(p) <= len(ordered) for p in bysetpos)):
                return True
    return False


def _until(value: str, zone: ZoneInfo) -> datetime:
    m = _UNTIL.match(value)
    if not m:
        raise _bad("UNTIL must be a date (20270301) or a UTC date-time (20270301T120000Z)")
    try:
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
        if m.group(2) is None:  # the whole day, in the series' zone
            return datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC) - timedelta(
                seconds=1
            )
        clock = datetime.strptime(m.group(2), "%H%M%S").time()
    except ValueError:
        raise _bad("UNTIL is not a valid date") from None
    if m.group(3) != "Z":
        raise _bad("UNTIL with a time must be in UTC (end it with Z), as RFC 5545 requires with a TZID")
    return datetime.combine(day, clock, UTC)


def _rrule(rule: Rule, start_local: datetime, until: datetime | None) -> du.rrule:
    byweekday = []
    for item in rule.byday:
        m = _BYDAY.match(item)
        assert m is not None  # noqa: S101  (parse_rrule checked it)
        weekday = WEEKDAYS[m.group(3)]
        byweekday.append(weekday(int(f"{m.group(1)}{m.group(2)}")) if m.group(2) else weekday)
    return du.rrule(
        FREQS[rule.freq],
        dtstart=start_local,
        interval=rule.interval,
        wkst=WEEKDAYS[rule.wkst] if rule.wkst else None,
        byweekday=byweekday or None,
        bymonthday=rule.bymonthday or None,
        bysetpos=rule.bysetpos or None,
        until=until,
        cache=False,
    )


def expand(rule: Rule, zone: ZoneInfo, dtstart: datetime, *, horizon: datetime) -> list[datetime]:
    """The rule's instances from dtstart, as UTC instants, all at or before `horizon`; a 400 when the
    rule has more than MAX_OCCURRENCES, an instance past the horizon, or none. dateutil never iterates
    past the horizon, so a rule that matches nothing costs no more than one that matches every day."""
    if rule.until is not None and rule.until > horizon:
        raise _bad("UNTIL is beyond the booking window (see maxAdvanceDays)")
    start_local = dtstart.astimezone(zone).replace(tzinfo=zone, fold=0)
    limit = rule.until if rule.until is not None else horizon
    found = list(islice(_rrule(rule, start_local, limit), rule.count or MAX_OCCURRENCES + 1))
    if len(found) > MAX_OCCURRENCES:
        raise _bad(f"yields more than {MAX_OCCURRENCES} occurrences")
    if rule.count is not None and 0 < len(found) < rule.count:
        raise _bad(f"has occurrences beyond the booking window: only {len(found)} of COUNT={rule.count} fit")
    if not found:
        raise _bad("yields no occurrence")
    return [d.astimezone(UTC) for d in found]


def instances(rrule: str, time_zone: str, dtstart: datetime) -> list[datetime]:
    """The instances of a stored (normalized, bounded) rule, as UTC instants: what the calendar feed and
    the series' edits read. A stored rule was expanded within the window at creation."""
    zone = ZoneInfo(time_zone)
    rule = parse_rrule(rrule, zone=zone)
    start_local = dtstart.astimezone(zone).replace(tzinfo=zone, fold=0)
    found = islice(_rrule(rule, start_local, rule.until), rule.count or MAX_OCCURRENCES)
    return [d.astimezone(UTC) for d in found]


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()
