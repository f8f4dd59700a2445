"""Bookings: their rows, the one-statement create, overlaps, reads: queries only, no rules (idempotency
keys are storage/idempotency.py, the audit log storage/audit.py)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from storage.db import Connection, P, Paged, Query, Record, page_of, paged, versioned_update
from storage.tables import (
    ACTIVE_STATUSES,
    OVERLAP_CONSTRAINT,
    audit_log,
    bookings,
    reminders,
)
from storage.webhook_outbox import outbox_cte


@dataclass(frozen=True, slots=True)
class Booking:
    id: uuid.UUID
    user_id: uuid.UUID
    user_seq: int
    title: str
    description: str | None
    location: str | None
    notes: str | None
    start_time: datetime
    end_time: datetime
    status: str
    reminder_minutes_before: int | None
    reminder_sent_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    resource_id: uuid.UUID | None = None
    resource_seq: int | None = None
    busy_start: datetime | None = None
    busy_end: datetime | None = None
    resource_exclusive: bool = False
    attendees: list[dict[str, Any]] = field(default_factory=list)
    series_id: uuid.UUID | None = None
    occurrence_start: datetime | None = None

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready copy for the audit log (the shape PostgreSQL's to_jsonb gives a row)."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True, slots=True)
class ListFilter:
    user_id: uuid.UUID | None  # None: every user's (admin)
    start_from: datetime | None = None
    start_to: datetime | None = None
    status: str | None = None


def _booking(row: Record | dict[str, Any]) -> Booking:
    return Booking(**row)


# --- create: one statement writes the booking, its audit row, its reminder and its webhook messages -------

NEW_BOOKING_FIELDS = (
    "id",
    "user_id",
    "user_seq",
    "title",
    "description",
    "location",
    "notes",
    "start_time",
    "end_time",
    "reminder_minutes_before",
    "attendees",
)


def _create_statement() -> sa.Select[Any]:
    created = (
        pg_insert(bookings)
        .values({name: P(name) for name in NEW_BOOKING_FIELDS})
        .on_conflict_do_nothing(constraint=OVERLAP_CONSTRAINT)
        .returning(*bookings.c)
        .cte("created")
    )
    audited = (
        sa.insert(audit_log)
        .from_select(
            ["actor_id", "action", "entity", "entity_id", "after"],
            sa.select(
                P("actor_id", type_=audit_log.c.actor_id.type),
                sa.literal("create"),
                sa.literal("booking"),
                created.c.id,
                sa.func.to_jsonb(created.table_valued()),
            ),
        )
        .cte("audited")
    )
    due = P("reminder_due_at", type_=reminders.c.due_at.type)
    armed = (
        sa.insert(reminders)
        .from_select(
            ["booking_id", "user_id", "start_time", "due_at"],
            sa.select(created.c.id, created.c.user_id, created.c.start_time, due).where(due.is_not(None)),
        )
        .cte("armed")
    )
    # One `booking.created` message per subscribed endpoint (none, and no extra round trip, without).
    queued = outbox_cte(created, "booking.created")
    webhook_ids = sa.select(sa.func.array_agg(queued.c.id)).scalar_subquery().label("webhook_ids")
    return sa.select(created, webhook_ids).add_cte(audited, armed, queued)


CREATE_BOOKING = Query(_create_statement())


async def create_booking(
    conn: Connection, *, actor_id: uuid.UUID, reminder_due_at: datetime | None, **fields: Any
) -> tuple[Booking, list[uuid.UUID]] | None:
    """Insert the booking with its audit row, (when `reminder_due_at` is set) its pending reminder and
    a `booking.created` webhook message per subscribed endpoint, atomically in one statement; the
    booking and the messages' ids. None when it overlaps an active booking of the same user (no
    deadlock: ON CONFLICT ON CONSTRAINT ... DO NOTHING)."""
    row = await CREATE_BOOKING.fetchrow(conn, actor_id=actor_id, reminder_due_at=reminder_due_at, **fields)
    if row is None:
        return None
    values = dict(row)
    ids = list(values.pop("webhook_ids") or ())
    return _booking(values), ids


_OVERLAP = sa.select(bookings.c.id).where(
    bookings.c.user_seq == P("user_seq"),
    bookings.c.status.in_(ACTIVE_STATUSES),
    bookings.c.start_time < P("end"),
    bookings.c.end_time > P("start"),
)
_FIND_OVERLAP = Query(_OVERLAP.order_by(bookings.c.start_time).limit(1))
_FIND_OVERLAP_EXCEPT = Query(
    _OVERLAP.where(bookings.c.id != P("exclude")).order_by(bookings.c.start_time).limit(1)
)


async def find_overlap(
    conn: Connection, *, user_seq: int, start: datetime, end: datetime, exclude: uuid.UUID | None = None
) -> uuid.UUID | None:
    if exclude is None:
        value = await _FIND_OVERLAP.fetchval(conn, user_seq=user_seq, start=start, end=end)
    else:
        value = await _FIND_OVERLAP_EXCEPT.fetchval(
            conn, user_seq=user_seq, start=start, end=end, exclude=exclude
        )
    return value if isinstance(value, uuid.UUID) else None


_GET = Query(sa.select(bookings).where(bookings.c.id == P("id")))
_GET_FOR_UPDATE = Query(sa.select(bookings).where(bookings.c.id == P("id")).with_for_update())


async def get_booking(conn: Connection, booking_id: uuid.UUID, *, for_update: bool = False) -> Booking | None:
    row = await (_GET_FOR_UPDATE if for_update else _GET).fetchrow(conn, id=booking_id)
    return _booking(row) if row else None


async def update_booking(conn: Connection, booking_id: uuid.UUID, values: dict[str, Any]) -> Booking:
    row = await versioned_update(bookings, frozenset(values)).fetchrow(conn, id=booking_id, **values)
    if row is None:
        raise LookupError(f"booking {booking_id} vanished under its row lock")
    return _booking(row)


_DELETE = Query(sa.delete(bookings).where(bookings.c.id == P("id")))


async def delete_booking(conn: Connection, booking_id: uuid.UUID) -> None:
    await _DELETE.execute(conn, id=booking_id)


# --- reads ---------------------------------------------------------------------------------------------


def _where(f: ListFilter) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if f.user_id is not None:
        where.append(bookings.c.user_id == P("user_id"))
    if f.start_from is not None:
        where.append(bookings.c.start_time >= P("start_from"))
    if f.start_to is not None:
        where.append(bookings.c.start_time < P("start_to"))
    if f.status is not None:
        where.append(bookings.c.status == P("status"))
    return where


def _params(f: ListFilter) -> dict[str, Any]:
    given = {"user_id": f.user_id, "start_from": f.start_from, "start_to": f.start_to, "status": f.status}
    return {k: v for k, v in given.items() if v is not None}


@cache
def list_query(shape: tuple[bool, ...]) -> Paged:
    """The page statement for a filter shape: which of (user_id, start_from, start_to, status) are set."""
    f = ListFilter(*(True if present else None for present in shape))  # type: ignore[arg-type]
    return paged(bookings, where=_where(f), order_by=[bookings.c.start_time, bookings.c.id])


async def list_bookings(
    conn: Connection, f: ListFilter, *, offset: int, limit: int
) -> tuple[list[Booking], int]:
    """One page and the total, from one statement (one snapshot: the two always agree)."""
    shape = (f.user_id is not None, f.start_from is not None, f.start_to is not None, f.status is not None)
    total, rows = await page_of(list_query(shape), conn, offset=offset, limit=limit, **_params(f))
    return [_booking(r) for r in rows], total


@cache
def _window_query(own: bool, upcoming: bool) -> Query:
    where = [bookings.c.user_id == P("user_id")] if own else []
    order: list[sa.ColumnElement[Any]]
    if upcoming:
        where += [bookings.c.start_time >= P("now"), bookings.c.status.in_(ACTIVE_STATUSES)]
        order = [bookings.c.start_time, bookings.c.id]
    else:
        where.append(bookings.c.end_time <= P("now"))
        order = [bookings.c.start_time.desc(), bookings.c.id.desc()]
    return Query(sa.select(bookings).where(*where).order_by(*order).limit(P("limit")))


async def upcoming(
    conn: Connection, *, user_id: uuid.UUID | None, now: datetime, limit: int
) -> list[Booking]:
    """Active bookings not yet started, soonest first."""
    params = {"user_id": user_id} if user_id is not None else {}
    rows = await _window_query(user_id is not None, True).fetch(conn, now=now, limit=limit, **params)
    return [_booking(r) for r in rows]


async def past(conn: Connection, *, user_id: uuid.UUID | None, now: datetime, limit: int) -> list[Booking]:
    """Bookings already ended, latest first."""
    params = {"user_id": user_id} if user_id is not None else {}
    rows = await _window_query(user_id is not None, False).fetch(conn, now=now, limit=limit, **params)
    return [_booking(r) for r in rows]
