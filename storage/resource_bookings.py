"""The statements that book a resource, its conflicts and its busy time: queries only, no rules.

How a resource booking stays within capacity (docs/ARCHITECTURE.md, "Resources"):

- every booking of a resource stores its busy range `[start - buffer before, end + buffer after)`,
  computed from the resource when the booking is written;
- capacity 1: the exclusion constraint `ex_bookings_resource_no_overlap` over (resource, busy range) of
  active rows written as exclusive; the insert uses ON CONFLICT DO NOTHING, so a racing loser gets no
  row (never an exception or a deadlock);
- capacity N: the writer holds the resource's row lock and then, in a statement of its own, counts the
  maximum overlap of active busy ranges over the new one; it inserts only when that is below capacity.
  A create does both inside its one statement (`CREATE_RESOURCE_BOOKING_LOCKED` calls the PL/pgSQL
  function `resource_has_room`); a move or an idempotent create locks with `lock_resources` (SELECT ...
  FOR UPDATE) in its transaction and counts in the next statement. Either way the count is a statement
  that starts after the lock was granted, so under READ COMMITTED its fresh snapshot holds every booking
  the previous holder committed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from storage.audit import AUDIT_CREATED
from storage.bookings import NEW_BOOKING_FIELDS, Booking
from storage.db import Connection, Query
from storage.webhook_outbox import outbox_sql

# --- booking a resource --------------------------------------------------------------------------------

_ACTIVE = "status IN ('scheduled', 'in-progress')"

# The active bookings of the resource whose busy ranges meet [busy_start, busy_end), through the GiST
# index ix_bookings_resource_busy (same expressions, same predicate).
_OVERLAPPING = f"""
    SELECT id, busy_start, busy_end FROM bookings
    WHERE resource_seq IS NOT NULL AND {_ACTIVE}
      AND int8range(resource_seq, resource_seq, '[]') && int8range(:resource_seq, :resource_seq, '[]')
      AND tstzrange(busy_start, busy_end, '[)')
          && tstzrange(CAST(:busy_start AS timestamptz), CAST(:busy_end AS timestamptz), '[)')
"""  # noqa: S608  (module constants, no input)
# The first instant of [busy_start, busy_end) at which `capacity` of them already overlap. The count of
# half-open ranges covering an instant only rises at a range's start, so the maximum over the interval
# is reached at busy_start or at one of the overlapping ranges' starts: those are the points to count.
_FULL_AT = """
    SELECT p FROM (
        SELECT CAST(:busy_start AS timestamptz) AS p
        UNION SELECT o.busy_start FROM o WHERE o.busy_start > CAST(:busy_start AS timestamptz)
    ) points
    WHERE (SELECT count(*) FROM o WHERE o.busy_start <= points.p AND o.busy_end > points.p) >= :capacity
    ORDER BY p
    LIMIT 1
"""

NEW_RESOURCE_BOOKING_FIELDS = (
    *NEW_BOOKING_FIELDS,
    "resource_id",
    "resource_seq",
    "busy_start",
    "busy_end",
    "resource_exclusive",
)


def _create_statement(*, locked: bool) -> str:
    """One statement: the capacity check, the booking, its audit row and its reminder row. ON CONFLICT
    DO NOTHING without a target covers both exclusion constraints (the owner's and the capacity-1
    resource's). The booking is written only while the resource row is at the version the writer read
    (its capacity, buffers, window, active flag): else no row.

    Unlocked (capacity 1): the count runs in the statement's snapshot; the exclusion constraint decides
    between racing writers. Locked (capacity N): `resource_has_room` (migration 0007) takes the
    resource's row lock, then counts in a statement of its own — a VOLATILE function's statements take
    a fresh snapshot under READ COMMITTED, so the count sees every booking the previous lock holder
    committed. The lock is held until this statement's transaction ends."""
    if locked:
        ctes = ""
        check = """resource_has_room(CAST(:resource_id AS uuid), CAST(:resource_version AS integer),
                                 CAST(:resource_seq AS bigint), CAST(:busy_start AS timestamptz),
                                 CAST(:busy_end AS timestamptz), CAST(:capacity AS integer))"""
    else:
        ctes = f"o AS ({_OVERLAPPING}),\n    full_at AS ({_FULL_AT}),"
        check = """NOT EXISTS (SELECT 1 FROM full_at)
          AND EXISTS (SELECT 1 FROM resources r WHERE r.id = CAST(:resource_id AS uuid)
                                                    AND r.version = CAST(:resource_version AS integer))"""
    return f"""
    WITH {ctes}
    created AS (
        INSERT INTO bookings (id, user_id, user_seq, title, description, location, notes, start_time,
                              end_time, reminder_minutes_before, attendees, resource_id, resource_seq,
                              busy_start, busy_end, resource_exclusive)
        SELECT CAST(:id AS uuid), CAST(:user_id AS uuid), CAST(:user_seq AS bigint), :title, :description,
               :location, :notes, CAST(:start_time AS timestamptz), CAST(:end_time AS timestamptz),
               CAST(:reminder_minutes_before AS integer), CAST(:attendees AS jsonb),
               CAST(:resource_id AS uuid), CAST(:resource_seq AS bigint),
               CAST(:busy_start AS timestamptz), CAST(:busy_end AS timestamptz),
               CAST(:resource_exclusive AS boolean)
        WHERE {check}
        ON CONFLICT DO NOTHING
        RETURNING *
    ),
    audited AS ({AUDIT_CREATED}),
    armed AS (
        INSERT INTO reminders (booking_id, user_id, start_time, due_at)
        SELECT created.id, created.user_id, created.start_time, CAST(:reminder_due_at AS timestamptz)
        FROM created WHERE CAST(:reminder_due_at AS timestamptz) IS NOT NULL
    ),
    queued AS ({outbox_sql("booking.created")})
    SELECT created.*, (SELECT array_agg(id) FROM queued) AS webhook_ids FROM created
    """  # noqa: S608  (module constants, no input)


CREATE_RESOURCE_BOOKING = Query(sa.text(_create_statement(locked=False)))
CREATE_RESOURCE_BOOKING_LOCKED = Query(sa.text(_create_statement(locked=True)))


@dataclass(frozen=True, slots=True)
class WrittenBooking:
    booking: Booking
    webhook_ids: list[uuid.UUID]  # the booking.created messages the statement queued


async def create_resource_booking(
    conn: Connection,
    *,
    actor_id: uuid.UUID,
    reminder_due_at: datetime | None,
    capacity: int,
    resource_version: int,
    locked: bool = False,
    **fields: Any,
) -> WrittenBooking | None:
    """The booking with its audit, reminder and webhook rows, or None: the resource is full over its
    busy range, it overlaps an exclusive booking of the resource or an active booking of its owner, or
    the resource row is no longer at `resource_version` (the writer's rules came from an older row)."""
    row = await (CREATE_RESOURCE_BOOKING_LOCKED if locked else CREATE_RESOURCE_BOOKING).fetchrow(
        conn,
        actor_id=actor_id,
        reminder_due_at=reminder_due_at,
        capacity=capacity,
        resource_version=resource_version,
        **fields,
    )
    if row is None:
        return None
    values = dict(row)
    ids = list(values.pop("webhook_ids") or ())
    return WrittenBooking(Booking(**values), ids)


_CONFLICTS = Query(
    sa.text(
        f"""
    WITH o AS ({_OVERLAPPING} AND id <> CAST(:exclude AS uuid)),
    full_at AS ({_FULL_AT})
    SELECT o.id FROM o, full_at
    WHERE o.busy_start <= full_at.p AND o.busy_end > full_at.p
    ORDER BY o.busy_start, o.id
    """  # noqa: S608  (module constants, no input)
    )
)
_NO_BOOKING = uuid.UUID(int=0)


async def resource_conflicts(
    conn: Connection,
    *,
    resource_seq: int,
    busy_start: datetime,
    busy_end: datetime,
    capacity: int,
    exclude: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """The active bookings that already fill the resource at the first full instant of the range (empty:
    there is room). Under the resource's row lock this is exact; without it, a snapshot."""
    rows = await _CONFLICTS.fetch(
        conn,
        resource_seq=resource_seq,
        busy_start=busy_start,
        busy_end=busy_end,
        capacity=capacity,
        exclude=exclude or _NO_BOOKING,
    )
    return [r["id"] for r in rows]


_EXCLUSIVE_CONFLICT = Query(
    sa.text(
        f"""
    SELECT id FROM bookings
    WHERE resource_seq = :resource_seq AND {_ACTIVE} AND resource_exclusive
      AND busy_start < CAST(:busy_end AS timestamptz) AND busy_end > CAST(:busy_start AS timestamptz)
      AND id <> CAST(:exclude AS uuid)
    ORDER BY busy_start LIMIT 1
    """  # noqa: S608  (module constants, no input)
    )
)


async def exclusive_conflict(
    conn: Connection,
    *,
    resource_seq: int,
    busy_start: datetime,
    busy_end: datetime,
    exclude: uuid.UUID | None = None,
) -> uuid.UUID | None:
    """An exclusive (capacity-1) booking of the resource in the way, as the exclusion constraint sees it."""
    value = await _EXCLUSIVE_CONFLICT.fetchval(
        conn,
        resource_seq=resource_seq,
        busy_start=busy_start,
        busy_end=busy_end,
        exclude=exclude or _NO_BOOKING,
    )
    return value if isinstance(value, uuid.UUID) else None


@dataclass(frozen=True, slots=True)
class Busy:
    booking_id: uuid.UUID
    user_id: uuid.UUID
    title: str
    start_time: datetime
    end_time: datetime
    busy_start: datetime
    busy_end: datetime


_BUSY = Query(
    sa.text(
        f"""
    SELECT id AS booking_id, user_id, title, start_time, end_time, busy_start, busy_end FROM bookings
    WHERE resource_seq IS NOT NULL AND {_ACTIVE}
      AND int8range(resource_seq, resource_seq, '[]') && int8range(:resource_seq, :resource_seq, '[]')
      AND tstzrange(busy_start, busy_end, '[)')
          && tstzrange(CAST(:from AS timestamptz), CAST(:to AS timestamptz), '[)')
    ORDER BY busy_start, id
    LIMIT 10000
    """  # noqa: S608  (module constants, no input)
    )
)


async def busy(conn: Connection, *, resource_seq: int, start: datetime, end: datetime) -> list[Busy]:
    rows = await _BUSY.fetch(conn, resource_seq=resource_seq, **{"from": start, "to": end})
    return [Busy(**r) for r in rows]
