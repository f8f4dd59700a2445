"""Resources: their rows, locked in one order, listed: queries only, no rules (the statements that book
them are storage/resource_bookings.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg
import sqlalchemy as sa

from storage.db import Connection, P, Paged, Query, Record, page_of, paged, versioned_update
from storage.errors import DuplicateName
from storage.tables import resources


@dataclass(frozen=True, slots=True)
class Resource:
    id: uuid.UUID
    seq: int
    name: str
    description: str | None
    kind: str
    time_zone: str
    capacity: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_advance_days: int
    active: bool
    version: int
    hours_weekly: list[dict[str, Any]] | None
    hours_overrides: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


def _resource(row: Record | dict[str, Any]) -> Resource:
    return Resource(**row)


EDITABLE = (
    "name",
    "description",
    "kind",
    "time_zone",
    "capacity",
    "buffer_before_minutes",
    "buffer_after_minutes",
    "min_notice_minutes",
    "max_advance_days",
    "active",
)


@cache
def _insert(names: frozenset[str]) -> Query:
    return Query(sa.insert(resources).values({n: P(n) for n in sorted(names)}).returning(*resources.c))


async def create_resource(conn: Connection, values: dict[str, Any]) -> Resource:
    """Raises DuplicateName when an active resource has the name (any case)."""
    try:
        row = await _insert(frozenset(values)).fetchrow(conn, **values)
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateName(values["name"]) from exc
    assert row is not None  # noqa: S101  (INSERT ... RETURNING always returns the row)
    return _resource(row)


_GET = Query(sa.select(resources).where(resources.c.id == P("id")))
_GET_FOR_UPDATE = Query(sa.select(resources).where(resources.c.id == P("id")).with_for_update())
# Several resources (a booking moving from one to another): locked in one fixed order, by id.
_LOCK_MANY = Query(
    sa.select(resources)
    .where(resources.c.id == sa.func.any(P("ids", type_=sa.ARRAY(resources.c.id.type))))
    .order_by(resources.c.id)
    .with_for_update()
)


async def get_resource(
    conn: Connection, resource_id: uuid.UUID, *, for_update: bool = False
) -> Resource | None:
    row = await (_GET_FOR_UPDATE if for_update else _GET).fetchrow(conn, id=resource_id)
    return _resource(row) if row else None


async def lock_resources(conn: Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, Resource]:
    """Row-lock every resource in `ids`, in ascending id order (the one lock order: resources by id,
    then the booking row), and return them by id."""
    rows = await _LOCK_MANY.fetch(conn, ids=sorted(set(ids)))
    return {r.id: r for r in map(_resource, rows)}


async def update_resource(conn: Connection, resource_id: uuid.UUID, values: dict[str, Any]) -> Resource:
    """Raises DuplicateName when the new name (or bringing it back) would make two active ones."""
    try:
        row = await versioned_update(resources, frozenset(values)).fetchrow(conn, id=resource_id, **values)
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateName(str(values.get("name", ""))) from exc
    if row is None:
        raise LookupError(f"resource {resource_id} vanished under its row lock")
    return _resource(row)


@cache
def _list_query(include_retired: bool) -> Paged:
    where = [] if include_retired else [resources.c.active.is_(True)]
    return paged(resources, where=where, order_by=[sa.func.lower(resources.c.name), resources.c.id])


async def list_resources(
    conn: Connection, *, include_retired: bool, offset: int, limit: int
) -> tuple[list[Resource], int]:
    total, rows = await page_of(_list_query(include_retired), conn, offset=offset, limit=limit)
    return [_resource(r) for r in rows], total
