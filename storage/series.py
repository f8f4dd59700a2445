"""Recurring series and their occurrences: queries only, no rules (actors/series.py has those).

Occurrences are rows of `bookings` under the same constraints as any booking: the owner's exclusion
constraint, and a resource's (capacity 1) or its row lock and count (capacity N). A series' occurrences
are written by one multi-row statement, ON CONFLICT DO NOTHING: the caller compares what came back with
what it asked for.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

from storage.audit import AUDIT_CREATED
from storage.bookings import Booking
from storage.db import Connection, P, Query, Record, versioned_update
from storage.tables import booking_series, bookings
from storage.webhook_outbox import outbox_sql


@dataclass(frozen=True, slots=True)
class Series:
    id: uuid.UUID
    user_id: uuid.UUID
    resource_id: uuid.UUID | None
    rrule: str
    time_zone: str
    dtstart: datetime
    duration_seconds: int
    exdates: list[str]
    title: str
    description: str | None
    location: str | None
    notes: str | None
    reminder_minutes_before: int | None
    version: int
    created_at: datetime
    updated_at: datetime


def _series(row: Record | dict[str, Any]) -> Series:
    return Series(**row)


@cache
def _insert(names: frozenset[str]) -> Query:
    return Query(
        sa.insert(booking_series).values({n: P(n) for n in sorted(names)}).returning(*booking_series.c)
    )


async def insert_series(conn: Connection, values: dict[str, Any]) -> Series:
    row = await _insert(frozenset(values)).fetchrow(conn, **values)
    assert row is not None  # noqa: S101  (INSERT ... RETURNING)
    return _series(row)


_GET = Query(sa.select(booking_series).where(booking_series.c.id == P("id")))
_GET_FOR_UPDATE = Query(sa.select(booking_series).where(booking_series.c.id == P("id")).with_for_update())


async def get_series(conn: Connection, series_id: uuid.UUID, *, for_update: bool = False) -> Series | None:
    row = await (_GET_FOR_UPDATE if for_update else _GET).fetchrow(conn, id=series_id)
    return _series(row) if row else None


async def update_series(conn: Connection, series_id: uuid.UUID, values: dict[str, Any]) -> Series:
    """Changes the named columns and moves the version (every change to an occurrence moves it too)."""
    row = await versioned_update(booking_series, frozenset(values)).fetchrow(conn, id=series_id, **values)
    if row is None:
        raise LookupError(f"series {series_id} vanished under its row lock")
    return _series(row)


async def touch(conn: Connection, series_id: uuid.UUID) -> Series:
    """An occurrence of the series changed: the series' version (its ETag, its feed's SEQUENCE) moves."""
    return await update_series(conn, series_id, {})


_DELETE = Query(sa.delete(booking_series).where(booking_series.c.id == P("id")))


async def delete_series(conn: Connection, series_id: uuid.UUID) -> None:
    await _DELETE.execute(conn, id=series_id)


_OCCURRENCES = Query(
    sa.select(bookings)
    .where(bookings.c.series_id == P("series_id"))
    .order_by(bookings.c.occurrence_start, bookings.c.id)
)
_OCCURRENCES_FOR_UPDATE = Query(
    sa.select(bookings)
    .where(bookings.c.series_id == P("series_id"))
    .order_by(bookings.c.occurrence_start, bookings.c.id)
    .with_for_update()
)


async def occurrences(conn: Connection, series_id: uuid.UUID, *, for_update: bool = False) -> list[Booking]:
    """Every occurrence row of the series in rule order (locked, in that order, when `for_update`)."""
    rows = await (_OCCURRENCES_FOR_UPDATE if for_update else _OCCURRENCES).fetch(conn, series_id=series_id)
    return [Booking(**r) for r in rows]


_MOVE = Query(
    sa.update(bookings)
    .where(bookings.c.id == sa.func.any(P("ids", type_=sa.ARRAY(bookings.c.id.type))))
    .values(series_id=P("series_id"))
)


async def move_occurrences(conn: Connection, ids: list[uuid.UUID], series_id: uuid.UUID) -> None:
    """Re-point occurrences at another series (a split: `scope=following`)."""
    await _MOVE.execute(conn, ids=ids, series_id=series_id)


# --- conflicts, read before the write ------------------------------------------------------------------

_ACTIVE = "b.status IN ('scheduled', 'in-progress')"

_OWN_OVERLAPS = Query(
    sa.text(
        f"""
    SELECT o.i, b.id FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]))
         WITH ORDINALITY AS o(s, e, i)
    JOIN bookings b ON b.user_id = CAST(:user_id AS uuid) AND {_ACTIVE}
                   AND b.start_time < o.e AND b.end_time > o.s
    ORDER BY o.i, b.start_time
    """  # noqa: S608  (module constants, no input)
    )
)


async def own_overlaps(
    conn: Connection, *, user_id: uuid.UUID, starts: list[datetime], ends: list[datetime]
) -> dict[int, uuid.UUID]:
    """For each occurrence (0-based) that meets an active booking of the owner: the first it meets."""
    found: dict[int, uuid.UUID] = {}
    for row in await _OWN_OVERLAPS.fetch(conn, user_id=user_id, starts=starts, ends=ends):
        found.setdefault(int(row["i"]) - 1, row["id"])
    return found


_RESOURCE_BUSY = Query(
    sa.text(
        f"""
    SELECT DISTINCT b.id, b.busy_start, b.busy_end
    FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[])) AS o(s, e)
    JOIN bookings b ON b.resource_seq IS NOT NULL AND {_ACTIVE}
      AND int8range(b.resource_seq, b.resource_seq, '[]') && int8range(:resource_seq, :resource_seq, '[]')
      AND tstzrange(b.busy_start, b.busy_end, '[)') && tstzrange(o.s, o.e, '[)')
    """  # noqa: S608  (module constants, no input)
    )
)


async def resource_busy(
    conn: Connection, *, resource_seq: int, starts: list[datetime], ends: list[datetime]
) -> list[tuple[uuid.UUID, datetime, datetime]]:
    """The active bookings of the resource whose busy ranges meet any of the given ranges (through the
    resource's GiST index)."""
    rows = await _RESOURCE_BUSY.fetch(conn, resource_seq=resource_seq, starts=starts, ends=ends)
    return [(r["id"], r["busy_start"], r["busy_end"]) for r in rows]


# --- the occurrences' one statement --------------------------------------------------------------------

_CREATE_OCCURRENCES = Query(
    sa.text(
        f"""
    WITH o AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:starts AS timestamptz[]),
                             CAST(:ends AS timestamptz[]), CAST(:busy_starts AS timestamptz[]),
                             CAST(:busy_ends AS timestamptz[]), CAST(:due_ats AS timestamptz[]))
             AS t(id, start_time, end_time, busy_start, busy_end, due_at)
    ),
    created AS (
        INSERT INTO bookings (id, user_id, user_seq, title, description, location, notes, start_time,
                              end_time, reminder_minutes_before, attendees, resource_id, resource_seq,
                              busy_start, busy_end, resource_exclusive, series_id, occurrence_start)
        SELECT o.id, CAST(:user_id AS uuid), CAST(:user_seq AS bigint), :title, :description, :location,
               :notes, o.start_time, o.end_time, CAST(:reminder_minutes_before AS integer),
               CAST(:attendees AS jsonb), CAST(:resource_id AS uuid), CAST(:resource_seq AS bigint),
               o.busy_start, o.busy_end, CAST(:resource_exclusive AS boolean), CAST(:series_id AS uuid),
               o.start_time
        FROM o ORDER BY o.start_time
        ON CONFLICT DO NOTHING
        RETURNING *
    ),
    audited AS ({AUDIT_CREATED}),
    armed AS (
        INSERT INTO reminders (booking_id, user_id, start_time, due_at)
        SELECT created.id, created.user_id, created.start_time, o.due_at
        FROM created JOIN o ON o.id = created.id WHERE o.due_at IS NOT NULL
    ),
    queued AS ({outbox_sql("booking.created")})
    SELECT created.*, (SELECT array_agg(id) FROM queued) AS webhook_ids FROM created
    ORDER BY created.start_time
    """  # noqa: S608  (module constants, no input)
    )
)


@dataclass(frozen=True, slots=True)
class Occurrence:
    id: uuid.UUID
    start_time: datetime
    end_time: datetime
    busy_start: datetime | None
    busy_end: datetime | None
    due_at: datetime | None  # its reminder, or None


async def create_occurrences(
    conn: Connection,
    *,
    actor_id: uuid.UUID,
    series_id: uuid.UUID,
    occurrences: list[Occurrence],
    user_id: uuid.UUID,
    user_seq: int,
    resource_id: uuid.UUID | None,
    resource_seq: int | None,
    resource_exclusive: bool,
    template: dict[str, Any],
) -> tuple[list[Booking], list[uuid.UUID]]:
    """The rows written (each with its audit row, reminder and webhook messages) and the messages' ids;
    an occurrence the constraints refused is simply absent."""
    rows = await _CREATE_OCCURRENCES.fetch(
        conn,
        actor_id=actor_id,
        series_id=series_id,
        user_id=user_id,
        user_seq=user_seq,
        resource_id=resource_id,
        resource_seq=resource_seq,
        resource_exclusive=resource_exclusive,
        ids=[o.id for o in occurrences],
        starts=[o.start_time for o in occurrences],
        ends=[o.end_time for o in occurrences],
        busy_starts=[o.busy_start for o in occurrences],
        busy_ends=[o.busy_end for o in occurrences],
        due_ats=[o.due_at for o in occurrences],
        **template,
    )
    written: list[Booking] = []
    queued: list[uuid.UUID] | None = None
    for row in rows:
        values = dict(row)
        ids = values.pop("webhook_ids")  # the statement's messages, repeated on every row
        queued = list(ids or ()) if queued is None else queued
        written.append(Booking(**values))
    return written, queued or []
