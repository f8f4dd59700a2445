"""Calendar feeds: the feed rows (never a secret, only its hash) and the reads a feed is rendered from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa

from storage.db import Connection, P, Query, Record
from storage.tables import ACTIVE_STATUSES, booking_series, bookings, calendar_feeds, resources, users


class DuplicatePrefix(Exception):
    """Another feed already has this prefix (a 48-bit random collision: draw again)."""


@dataclass(frozen=True, slots=True)
class CalendarFeed:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str  # "bookings" | "resource"
    resource_id: uuid.UUID | None
    name: str
    prefix: str
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class FeedOwner:
    """The feed's owner as a fetch needs them: a suspended owner's feeds answer 404, an admin's resource
    feeds show every title."""

    role: str
    status: str


_PUBLIC = [c for c in calendar_feeds.c if c.name != "secret_hash"]


def _feed(row: Record) -> CalendarFeed:
    return CalendarFeed(**{c.name: row[c.name] for c in _PUBLIC})


_LIVE = calendar_feeds.c.revoked_at.is_(None)
_OWNED = sa.and_(calendar_feeds.c.id == P("id"), calendar_feeds.c.user_id == P("user_id"), _LIVE)

# The owner's row, locked against another feed create of theirs (and nothing else: FOR NO KEY UPDATE
# does not conflict with the FOR KEY SHARE a booking insert's foreign key takes), so the live-feed limit
# holds under concurrent creates.
_LOCK_OWNER = Query(sa.select(users.c.id).where(users.c.id == P("user_id")).with_for_update(key_share=True))
_COUNT_LIVE = Query(
    sa.select(sa.func.count())
    .select_from(calendar_feeds)
    .where(calendar_feeds.c.user_id == P("user_id"), _LIVE)
)
_INSERT = Query(
    sa.insert(calendar_feeds)
    .values(
        user_id=P("user_id"),
        kind=P("kind"),
        resource_id=P("resource_id"),
        name=P("name"),
        prefix=P("prefix"),
        secret_hash=P("secret_hash"),
    )
    .returning(*_PUBLIC)
)
_LIST_LIVE = Query(
    sa.select(*_PUBLIC)
    .where(calendar_feeds.c.user_id == P("user_id"), _LIVE)
    .order_by(calendar_feeds.c.created_at, calendar_feeds.c.id)
)
_ROTATE = Query(
    sa.update(calendar_feeds)
    .where(_OWNED)
    .values(prefix=P("prefix"), secret_hash=P("secret_hash"), rotated_at=sa.func.now())
    .returning(*_PUBLIC)
)
_REVOKE = Query(sa.update(calendar_feeds).where(_OWNED).values(revoked_at=sa.func.now()).returning(*_PUBLIC))
_BY_PREFIX = Query(
    sa.select(calendar_feeds, users.c.role.label("owner_role"), users.c.status.label("owner_status"))
    .join(users, users.c.id == calendar_feeds.c.user_id)
    .where(calendar_feeds.c.prefix == P("prefix", sa.Text))
)
# Like api_keys: at most one write per feed per interval, across every process.
_TOUCH = Query(
    sa.update(calendar_feeds)
    .where(
        calendar_feeds.c.id == P("id"),
        sa.or_(
            calendar_feeds.c.last_used_at.is_(None),
            calendar_feeds.c.last_used_at < sa.func.now() - P("interval", sa.Interval),
        ),
    )
    .values(last_used_at=sa.func.now())
)


async def lock_owner(conn: Connection, user_id: uuid.UUID) -> bool:
    return await _LOCK_OWNER.fetchval(conn, user_id=user_id) is not None


async def count_live(conn: Connection, user_id: uuid.UUID) -> int:
    return int(await _COUNT_LIVE.fetchval(conn, user_id=user_id))


async def insert_feed(
    conn: Connection,
    *,
    user_id: uuid.UUID,
    kind: str,
    resource_id: uuid.UUID | None,
    name: str,
    prefix: str,
    secret_hash: str,
) -> CalendarFeed:
    try:
        row = await _INSERT.fetchrow(
            conn,
            user_id=user_id,
            kind=kind,
            resource_id=resource_id,
            name=name,
            prefix=prefix,
            secret_hash=secret_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise DuplicatePrefix(prefix) from exc
    assert row is not None  # noqa: S101 (INSERT ... RETURNING returns the row)
    return _feed(row)


async def list_live(conn: Connection, user_id: uuid.UUID) -> list[CalendarFeed]:
    return [_feed(r) for r in await _LIST_LIVE.fetch(conn, user_id=user_id)]


async def rotate(
    conn: Connection, *, feed_id: uuid.UUID, user_id: uuid.UUID, prefix: str, secret_hash: str
) -> CalendarFeed | None:
    """A new prefix and secret on the owner's live feed; None when there is no such feed."""
    try:
        row = await _ROTATE.fetchrow(
            conn, id=feed_id, user_id=user_id, prefix=prefix, secret_hash=secret_hash
        )
    except asyncpg.UniqueViolationError as exc:
        raise DuplicatePrefix(prefix) from exc
    return _feed(row) if row else None


async def revoke(conn: Connection, *, feed_id: uuid.UUID, user_id: uuid.UUID) -> CalendarFeed | None:
    row = await _REVOKE.fetchrow(conn, id=feed_id, user_id=user_id)
    return _feed(row) if row else None


async def get_by_prefix(conn: Connection, prefix: str) -> tuple[CalendarFeed, str, FeedOwner] | None:
    """The feed (live or revoked), its stored secret hash and its owner."""
    row = await _BY_PREFIX.fetchrow(conn, prefix=prefix)
    if row is None:
        return None
    return _feed(row), row["secret_hash"], FeedOwner(role=row["owner_role"], status=row["owner_status"])


async def touch(conn: Connection, feed_id: uuid.UUID, *, interval: timedelta) -> bool:
    """Record a fetch, unless one was recorded within `interval`; whether it wrote."""
    return await _TOUCH.execute(conn, id=feed_id, interval=interval) == 1


# --- what a feed shows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedBooking:
    """The columns of a booking a feed renders (a bookings feed's; a resource feed reads `FeedBusy`)."""

    id: uuid.UUID
    title: str
    description: str | None
    location: str | None
    start_time: datetime
    end_time: datetime
    status: str
    version: int
    created_at: datetime
    updated_at: datetime
    series_id: uuid.UUID | None
    occurrence_start: datetime | None


@dataclass(frozen=True, slots=True)
class FeedSeries:
    id: uuid.UUID
    rrule: str
    time_zone: str
    dtstart: datetime
    duration_seconds: int
    title: str
    description: str | None
    location: str | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FeedBusy:
    id: uuid.UUID
    user_id: uuid.UUID
    title: str
    busy_start: datetime
    busy_end: datetime
    version: int
    created_at: datetime
    updated_at: datetime


_BOOKING_COLUMNS = [bookings.c[name] for name in FeedBooking.__dataclass_fields__]
_SERIES_COLUMNS = [booking_series.c[name] for name in FeedSeries.__dataclass_fields__]

# The series with an occurrence row still in the window (ending after :since). A series is shown whole
# (its rule from dtstart on), so every row of it is read, however old: an old moved or cancelled
# occurrence needs its override, a missing one its EXDATE.
_SHOWN_SERIES = (
    sa.select(bookings.c.series_id)
    .where(
        bookings.c.user_id == P("user_id"),
        bookings.c.series_id.is_not(None),
        bookings.c.end_time > P("since"),
    )
    .distinct()
)
_FEED_SERIES = Query(
    sa.select(*_SERIES_COLUMNS)
    .where(booking_series.c.user_id == P("user_id"), booking_series.c.id.in_(_SHOWN_SERIES))
    .order_by(booking_series.c.dtstart, booking_series.c.id)
)
_FEED_BOOKINGS = Query(
    sa.select(*_BOOKING_COLUMNS)
    .where(
        bookings.c.user_id == P("user_id"),
        sa.or_(
            sa.and_(bookings.c.series_id.is_(None), bookings.c.end_time > P("since")),
            bookings.c.series_id.in_(_SHOWN_SERIES),
        ),
    )
    .order_by(bookings.c.start_time, bookings.c.id)
)


async def bookings_feed_rows(
    conn: Connection, *, user_id: uuid.UUID, since: datetime
) -> tuple[list[FeedSeries], list[FeedBooking]]:
    """The owner's bookings ending after `since` and the whole of each series that has one: one query for
    the series, one for the bookings. Run them in one snapshot (a repeatable-read transaction)."""
    # Positionally: the columns are selected in the dataclasses' field order, and `**record` costs five
    # times as much (about 5 µs a row: 10 ms for 2,000).
    series = [FeedSeries(*r) for r in await _FEED_SERIES.fetch(conn, user_id=user_id, since=since)]
    rows = [FeedBooking(*r) for r in await _FEED_BOOKINGS.fetch(conn, user_id=user_id, since=since)]
    return series, rows


_FEED_RESOURCE = Query(
    sa.select(resources.c.id, resources.c.seq, resources.c.name, resources.c.version).where(
        resources.c.id == P("id")
    )
)
# The resource's active busy ranges (buffers included) ending after :since, through the partial GiST
# index of resource busy ranges, as storage/resource_bookings.py's busy time reads them.
_FEED_BUSY = Query(
    sa.text(
        f"""
    SELECT id, user_id, title, busy_start, busy_end, version, created_at, updated_at FROM bookings
    WHERE resource_seq IS NOT NULL AND status IN ({", ".join(f"'{s}'" for s in ACTIVE_STATUSES)})
      AND int8range(resource_seq, resource_seq, '[]') && int8range(:seq, :seq, '[]')
      AND tstzrange(busy_start, busy_end, '[)') && tstzrange(CAST(:since AS timestamptz), NULL, '[)')
    ORDER BY busy_start, id
    """  # noqa: S608  (module constants, no input)
    )
)


async def resource_feed_rows(
    conn: Connection, *, resource_id: uuid.UUID, since: datetime
) -> tuple[dict[str, Any], list[FeedBusy]] | None:
    """The resource (id, seq, name, version) and its busy ranges ending after `since`; None when the
    resource is gone."""
    resource = await _FEED_RESOURCE.fetchrow(conn, id=resource_id)
    if resource is None:
        return None
    rows = await _FEED_BUSY.fetch(conn, seq=resource["seq"], since=since)
    return dict(resource), [FeedBusy(*r) for r in rows]  # columns in field order, as above
