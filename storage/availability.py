"""Users' own availability and the busy spans the availability rules need: queries only (a resource's
working hours are columns of its row, storage/resources.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from asyncpg import Record

from storage.db import Connection, P, Query
from storage.tables import user_availability


@dataclass(frozen=True, slots=True)
class StoredAvailability:
    user_id: uuid.UUID
    time_zone: str
    weekly: list[dict[str, Any]] | None
    version: int
    updated_at: datetime | None


_GET_AVAILABILITY = Query(sa.select(user_availability).where(user_availability.c.user_id == P("user_id")))
_GET_AVAILABILITY_FOR_UPDATE = Query(
    sa.select(user_availability).where(user_availability.c.user_id == P("user_id")).with_for_update()
)
_PUT_AVAILABILITY = Query(
    sa.text(
        """
    INSERT INTO user_availability AS a (user_id, time_zone, weekly)
    VALUES (:user_id, :time_zone, CAST(:weekly AS jsonb))
    ON CONFLICT (user_id) DO UPDATE
       SET time_zone = EXCLUDED.time_zone, weekly = EXCLUDED.weekly,
           version = a.version + 1, updated_at = now()
    RETURNING user_id, time_zone, weekly, version, updated_at
    """
    )
)
_MANY_AVAILABILITY = Query(
    sa.select(user_availability).where(
        user_availability.c.user_id == sa.func.any(P("ids", type_=sa.ARRAY(user_availability.c.user_id.type)))
    )
)


def _availability(row: Record | None, user_id: uuid.UUID) -> StoredAvailability:
    if row is None:
        return StoredAvailability(user_id, "UTC", None, 0, None)
    return StoredAvailability(**row)


async def get_availability(
    conn: Connection, user_id: uuid.UUID, *, for_update: bool = False
) -> StoredAvailability:
    query = _GET_AVAILABILITY_FOR_UPDATE if for_update else _GET_AVAILABILITY
    return _availability(await query.fetchrow(conn, user_id=user_id), user_id)


async def put_availability(
    conn: Connection, user_id: uuid.UUID, *, time_zone: str, weekly: list[dict[str, Any]] | None
) -> StoredAvailability:
    row = await _PUT_AVAILABILITY.fetchrow(conn, user_id=user_id, time_zone=time_zone, weekly=weekly)
    return _availability(row, user_id)


async def availabilities(conn: Connection, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, StoredAvailability]:
    rows = await _MANY_AVAILABILITY.fetch(conn, ids=user_ids)
    found = {r["user_id"]: _availability(r, r["user_id"]) for r in rows}
    return {u: found.get(u) or _availability(None, u) for u in user_ids}


# --- busy spans -------------------------------------------------------------------------------------------

_ACTIVE = "status IN ('scheduled', 'in-progress')"

# Every active booking of the resource whose busy range (buffers included) meets [from, to), through the
# partial GiST index of resource busy ranges. Only the two instants: the rules need nothing else.
_RESOURCE_BUSY_SQL = f"""
    SELECT busy_start, busy_end FROM bookings
    WHERE resource_seq IS NOT NULL AND {_ACTIVE}
      AND int8range(resource_seq, resource_seq, '[]') && int8range(:seq, :seq, '[]')
      AND tstzrange(busy_start, busy_end, '[)')
          && tstzrange(CAST(:from AS timestamptz), CAST(:to AS timestamptz), '[)')
"""  # noqa: S608  (module constants, no input)
_RESOURCE_BUSY = Query(sa.text(_RESOURCE_BUSY_SQL))

# A user's active bookings meeting [from, to), through the per-user exclusion constraint's GiST index.
_USER_BUSY = Query(
    sa.text(
        f"""
    SELECT start_time, end_time FROM bookings
    WHERE {_ACTIVE}
      AND int8range(user_seq, user_seq, '[]') && int8range(:seq, :seq, '[]')
      AND tstzrange(start_time, end_time, '[)')
          && tstzrange(CAST(:from AS timestamptz), CAST(:to AS timestamptz), '[)')
    """  # noqa: S608  (module constants, no input)
    )
)

Span = tuple[datetime, datetime]


async def resource_busy(conn: Connection, *, resource_seq: int, start: datetime, end: datetime) -> list[Span]:
    rows = await _RESOURCE_BUSY.fetch(conn, seq=resource_seq, **{"from": start, "to": end})
    return [(r["busy_start"], r["busy_end"]) for r in rows]


# Where at least :capacity of those busy ranges overlap, merged: a sweep in PostgreSQL (+1 at each
# start, -1 at each end, a running sum over the instants), so a month of back-to-back bookings comes
# back as one row instead of thousands. Ends before starts at one instant: the ranges are half-open.
_RESOURCE_FULL = Query(
    sa.text(
        f"""
    WITH busy AS ({_RESOURCE_BUSY_SQL}),
    steps AS (
        SELECT at, sum(delta) AS delta FROM (
            SELECT busy_start AS at, 1 AS delta FROM busy UNION ALL SELECT busy_end, -1 FROM busy
        ) ends GROUP BY at
    ),
    covered AS (
        SELECT at, lead(at) OVER (ORDER BY at) AS until, sum(delta) OVER (ORDER BY at) AS seats FROM steps
    )
    SELECT lower(r) AS busy_start, upper(r) AS busy_end
    FROM unnest((SELECT range_agg(tstzrange(at, until, '[)')) FROM covered
                 WHERE seats >= :capacity AND until IS NOT NULL)) AS r
    ORDER BY 1
    """  # noqa: S608  (module constants, no input)
    )
)


# Capacity 1: every busy range is full time; range_agg merges them (5x cheaper than the sweep).
_RESOURCE_FULL_EXCLUSIVE = Query(
    sa.text(
        f"""
    WITH busy AS ({_RESOURCE_BUSY_SQL})
    SELECT lower(r) AS busy_start, upper(r) AS busy_end
    FROM unnest((SELECT range_agg(tstzrange(busy_start, busy_end, '[)')) FROM busy)) AS r
    ORDER BY 1
    """  # noqa: S608  (module constants, no input)
    )
)


async def resource_full(
    conn: Connection, *, resource_seq: int, capacity: int, start: datetime, end: datetime
) -> list[Span]:
    """The full spans (no seat left) of the resource's busy ranges meeting [start, end)."""
    window = {"from": start, "to": end}
    if capacity == 1:
        rows = await _RESOURCE_FULL_EXCLUSIVE.fetch(conn, seq=resource_seq, **window)
    else:
        rows = await _RESOURCE_FULL.fetch(conn, seq=resource_seq, capacity=capacity, **window)
    return [(r["busy_start"], r["busy_end"]) for r in rows]


async def user_busy(conn: Connection, *, user_seq: int, start: datetime, end: datetime) -> list[Span]:
    rows = await _USER_BUSY.fetch(conn, seq=user_seq, **{"from": start, "to": end})
    return [(r["start_time"], r["end_time"]) for r in rows]


# The active bookings of a resource starting in [from, to) (outside-hours listing for the admin).
_UPCOMING = Query(
    sa.text(
        f"""
    SELECT id, start_time, end_time FROM bookings
    WHERE resource_seq IS NOT NULL AND {_ACTIVE}
      AND int8range(resource_seq, resource_seq, '[]') && int8range(:seq, :seq, '[]')
      AND tstzrange(busy_start, busy_end, '[)')
          && tstzrange(CAST(:from AS timestamptz), CAST(:to AS timestamptz), '[)')
    ORDER BY start_time, id
    LIMIT :limit
    """  # noqa: S608  (module constants, no input)
    )
)


async def upcoming(
    conn: Connection, *, resource_seq: int, start: datetime, end: datetime, limit: int
) -> list[tuple[uuid.UUID, datetime, datetime]]:
    rows = await _UPCOMING.fetch(conn, seq=resource_seq, limit=limit, **{"from": start, "to": end})
    return [(r["id"], r["start_time"], r["end_time"]) for r in rows]
