"""iCalendar (RFC 5545) text of the calendar feeds, built with the `icalendar` library (docs/CALENDAR.md).

Pure functions of the rows storage/calendar_feeds.py reads: the same rows give the same bytes, which is
what lets the feed's strong ETag be computed from the rows (`*_etag`) without rendering, so a client's
`If-None-Match` is answered 304 before any iCalendar is built.

A bookings feed: one VEVENT per booking (`UID:<booking id>@booking`, UTC times); a series is one master
VEVENT (`UID:<series id>@booking`, `DTSTART;TZID=`, `RRULE`, `EXDATE` for every instance of the rule that
has no row) plus an override (`RECURRENCE-ID`) for each occurrence row that differs from the template.
A resource feed: one `Busy` VEVENT per active booking of the resource (buffers included); the title only
where the viewer may see it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache, partial
from importlib.metadata import version
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone
from icalendar.prop import vDDDLists, vDDDTypes, vInt, vRecur, vText

from actors.domain.errors import DomainError
from actors.domain.recurrence import MAX_OCCURRENCES, instances

if TYPE_CHECKING:
    from storage.calendar_feeds import FeedBooking, FeedBusy, FeedSeries

log = logging.getLogger(__name__)

PRODID = "-//Booking service//Calendar feed//EN"
REFRESH = "PT15M"  # the refresh a client is asked for (RFC 7986 REFRESH-INTERVAL, X-PUBLISHED-TTL)
# Part of every ETag: a change to what the same rows render to (this module, the library) changes it.
RENDERING = f"ics-1/icalendar-{version('icalendar')}"
_CANCELLED = "cancelled"


# --- the calendar ----------------------------------------------------------------------------------------


def _calendar(name: str) -> Calendar:
    cal = Calendar()
    cal["PRODID"] = vText(PRODID)
    cal["VERSION"] = vText("2.0")
    cal["CALSCALE"] = vText("GREGORIAN")
    cal["NAME"] = vText(name)  # RFC 7986
    cal["X-WR-CALNAME"] = vText(name)  # what most clients read instead
    cal["REFRESH-INTERVAL"] = vDDDTypes(timedelta(minutes=15))
    cal["REFRESH-INTERVAL"].params["VALUE"] = "DURATION"
    cal["X-PUBLISHED-TTL"] = vText(REFRESH)
    return cal


@lru_cache(maxsize=64)
def _vtimezone(zone: str, first_year: int, last_year: int) -> Timezone:
    """VTIMEZONE from zoneinfo's own rules (icalendar computes the transitions), over whole years around
    the times shown; cached: the library's generation is the costly part."""
    vtimezone = Timezone.from_tzinfo(
        ZoneInfo(zone), tzid=zone, first_date=date(first_year, 1, 1), last_date=date(last_year + 1, 1, 1)
    )
    # icalendar 7.3 adds "COMMENT:This timezone only works from ..." to the VTIMEZONE itself, where RFC
    # 5545 allows no COMMENT (only inside STANDARD/DAYLIGHT); libical reports it. The range is ours anyway.
    vtimezone.pop("COMMENT", None)
    return vtimezone


def _stamp(event: Event, created: datetime, updated: datetime, version: int) -> None:
    event["DTSTAMP"] = vDDDTypes(updated.astimezone(UTC))
    event["CREATED"] = vDDDTypes(created.astimezone(UTC))
    event["LAST-MODIFIED"] = vDDDTypes(updated.astimezone(UTC))
    event["SEQUENCE"] = vInt(max(0, version - 1))


def _text(event: Event, name: str, value: str | None) -> None:
    if value:
        event[name] = vText(value)


def _utc(value: datetime) -> vDDDTypes:
    return vDDDTypes(value.astimezone(UTC))


def _booking_event(b: FeedBooking) -> Event:
    event = Event()
    event["UID"] = vText(f"{b.id}@booking")
    _stamp(event, b.created_at, b.updated_at, b.version)
    event["DTSTART"] = _utc(b.start_time)
    event["DTEND"] = _utc(b.end_time)
    event["SUMMARY"] = vText(b.title)
    _text(event, "DESCRIPTION", b.description)
    _text(event, "LOCATION", b.location)
    event["STATUS"] = vText("CANCELLED" if b.status == _CANCELLED else "CONFIRMED")
    return event


def differs_from_template(row: FeedBooking, series: FeedSeries) -> bool:
    """Whether an occurrence row needs an override VEVENT: moved, retitled, described or located
    otherwise than its series, or cancelled."""
    assert row.occurrence_start is not None  # noqa: S101 (an occurrence row has one: ck_bookings_series_shape)
    return (
        row.status == _CANCELLED
        or row.start_time != row.occurrence_start
        or row.end_time != row.occurrence_start + timedelta(seconds=series.duration_seconds)
        or row.title != series.title
        or (row.description or None) != (series.description or None)
        or (row.location or None) != (series.location or None)
    )


def _rule(series: FeedSeries, found: Sequence[datetime]) -> vRecur:
    """The stored rule; bounded by UNTIL at its last instance when it has no bound of its own or has more
    instances than the contract expands, so a client expands exactly the instances there can be rows for."""
    rule: vRecur = vRecur.from_ical(series.rrule)
    unbounded = "COUNT" not in rule and "UNTIL" not in rule
    if found and (unbounded or len(found) >= MAX_OCCURRENCES):
        rule.pop("COUNT", None)
        rule["UNTIL"] = [found[-1].astimezone(UTC)]
    return rule


def _series_events(series: FeedSeries, rows: Sequence[FeedBooking], found: Sequence[datetime]) -> list[Event]:
    zone = ZoneInfo(series.time_zone)
    uid = vText(f"{series.id}@booking")
    duration = timedelta(seconds=series.duration_seconds)
    master = Event()
    master["UID"] = uid
    _stamp(master, series.created_at, series.updated_at, series.version)
    start = series.dtstart.astimezone(zone)
    master["DTSTART"] = vDDDTypes(start)
    master["DTEND"] = vDDDTypes((series.dtstart + duration).astimezone(zone))  # the exact duration
    master["RRULE"] = _rule(series, found)
    have = {r.occurrence_start for r in rows}
    missing = [i.astimezone(zone) for i in found if i not in have]
    if missing:
        master["EXDATE"] = vDDDLists(missing)
    master["SUMMARY"] = vText(series.title)
    _text(master, "DESCRIPTION", series.description)
    _text(master, "LOCATION", series.location)
    master["STATUS"] = vText("CONFIRMED")
    events = [master]
    for row in rows:
        if not differs_from_template(row, series):
            continue
        assert row.occurrence_start is not None  # noqa: S101 (see differs_from_template)
        override = Event()
        override["UID"] = uid
        override["RECURRENCE-ID"] = vDDDTypes(row.occurrence_start.astimezone(zone))
        _stamp(override, row.created_at, row.updated_at, row.version)
        override["DTSTART"] = vDDDTypes(row.start_time.astimezone(zone))
        override["DTEND"] = vDDDTypes(row.end_time.astimezone(zone))
        override["SUMMARY"] = vText(row.title)
        _text(override, "DESCRIPTION", row.description)
        _text(override, "LOCATION", row.location)
        override["STATUS"] = vText("CANCELLED" if row.status == _CANCELLED else "CONFIRMED")
        events.append(override)
    return events


# Serialized components, by what they are a function of (a booking's id and version, a series' id and
# version with its rows', the variant a resource feed shows): a feed in which one booking changed is
# serialized again for that booking only. The library's serialization is most of a render's cost (about
# 0.2 ms per event); bounded, least recently used first out. Renders run in worker threads: locked.
CACHED_COMPONENTS = 20_000
_components: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
_components_lock = threading.Lock()
_END = b"END:VCALENDAR\r\n"


def _serialized(key: tuple[object, ...], build: Callable[[], Iterable[Event]]) -> bytes:
    with _components_lock:
        found = _components.get(key)
        if found is not None:
            _components.move_to_end(key)
            return found
    text = b"".join(event.to_ical() for event in build())
    with _components_lock:
        _components[key] = text
        while len(_components) > CACHED_COMPONENTS:
            _components.popitem(last=False)
    return text


def _assemble(cal: Calendar, parts: Iterable[bytes]) -> bytes:
    """The calendar's own lines, then the components: what `cal.to_ical()` gives with them added."""
    head: bytes = cal.to_ical()
    if not head.endswith(_END):
        raise AssertionError("icalendar ended a VCALENDAR otherwise than END:VCALENDAR")
    return b"".join([head[: -len(_END)], *parts, _END])


def _timezones(used: dict[str, list[datetime]]) -> list[bytes]:
    out = []
    for zone, times in sorted(used.items()):
        years = [t.astimezone(ZoneInfo(zone)).year for t in times]
        out.append(_vtimezone_text(zone, min(years) - 1, max(years) + 1))
    return out


@lru_cache(maxsize=64)
def _vtimezone_text(zone: str, first_year: int, last_year: int) -> bytes:
    text: bytes = _vtimezone(zone, first_year, last_year).to_ical()
    return text


def _rows_key(rows: Sequence[FeedBooking]) -> str:
    return hashlib.sha256("".join(f"{r.id}:{r.version};" for r in rows).encode()).hexdigest()


def render_bookings(name: str, series: Sequence[FeedSeries], rows: Sequence[FeedBooking]) -> bytes:
    """A bookings feed: the rows, each series as its master and overrides (VTIMEZONEs first)."""
    by_series: dict[uuid.UUID, list[FeedBooking]] = {s.id: [] for s in series}
    parts: list[bytes] = []
    for row in rows:
        if row.series_id is None:
            parts.append(_serialized(("b", row.id, row.version), partial(_one_booking, row)))
        elif row.series_id in by_series:
            by_series[row.series_id].append(row)
    used: dict[str, list[datetime]] = {}
    for s in series:
        occurrences = by_series[s.id]
        try:
            found = instances(s.rrule, s.time_zone, s.dtstart)
        except DomainError:  # a rule the series code would not have stored; one series must not fail all
            log.warning(
                "series %s: stored rule %r does not parse; its occurrences shown alone", s.id, s.rrule
            )
            found = []
        if not found:  # no instance at all (never written so): its rows stand alone
            parts += [_serialized(("b", r.id, r.version), partial(_one_booking, r)) for r in occurrences]
            continue
        key = ("s", s.id, s.version, _rows_key(occurrences))
        parts.append(_serialized(key, partial(_series_events, s, occurrences, found)))
        times = used.setdefault(s.time_zone, [])
        times += [found[0], found[-1], *(r.start_time for r in occurrences)]
    return _assemble(_calendar(name), [*_timezones(used), *parts])


def _one_booking(row: FeedBooking) -> list[Event]:
    return [_booking_event(row)]


def _busy_event(b: FeedBusy, summary: str) -> list[Event]:
    event = Event()
    event["UID"] = vText(f"{b.id}@booking")
    _stamp(event, b.created_at, b.updated_at, b.version)
    event["DTSTART"] = _utc(b.busy_start)
    event["DTEND"] = _utc(b.busy_end)
    event["SUMMARY"] = vText(summary)
    event["STATUS"] = vText("CONFIRMED")
    event["TRANSP"] = vText("OPAQUE")
    return [event]


def render_resource(name: str, rows: Sequence[FeedBusy], *, viewer: uuid.UUID, titles: bool) -> bytes:
    """A resource feed: `Busy` for each busy range; the booking's title only for the viewer's own (every
    title with `titles`, an admin's feed). No description, location or attendees."""
    parts = []
    for b in rows:
        summary = b.title if titles or b.user_id == viewer else "Busy"
        parts.append(_serialized(("r", b.id, b.version, summary), partial(_busy_event, b, summary)))
    return _assemble(_calendar(name), parts)


# --- ETags -----------------------------------------------------------------------------------------------


def _etag(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return f'"{digest.hexdigest()[:32]}"'


def bookings_etag(name: str, series: Sequence[FeedSeries], rows: Sequence[FeedBooking]) -> str:
    """The strong ETag of `render_bookings(name, series, rows)`, from what it renders: each row's id and
    version (every change of a booking or series moves its version), in the order rendered."""
    return _etag(
        [
            RENDERING,
            "bookings",
            name,
            *(f"s{s.id}:{s.version}" for s in series),
            *(f"b{r.id}:{r.version}" for r in rows),
        ]
    )


def resource_etag(name: str, rows: Sequence[FeedBusy], *, viewer: uuid.UUID, titles: bool) -> str:
    return _etag(
        [
            RENDERING,
            "resource",
            name,
            str(viewer),
            "titles" if titles else "own",
            *(f"b{r.id}:{r.version}" for r in rows),
        ]
    )
