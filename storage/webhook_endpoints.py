"""Webhook endpoints: their rows, the rotation of their secrets, their failure clock and disabling:
queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

from storage.db import Connection, P, Query, Record, page_of, paged
from storage.tables import webhook_endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: uuid.UUID
    user_id: uuid.UUID
    all_bookings: bool
    url: str
    events: list[str]
    description: str | None
    active: bool
    secret: str = field(repr=False)  # never in a log line or a traceback's repr
    previous_secret: str | None = field(repr=False)
    previous_secret_expires_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, and the previous one while its rotation overlap lasts."""
        keep = (
            self.previous_secret is not None
            and self.previous_secret_expires_at is not None
            and self.previous_secret_expires_at > now
        )
        return [self.secret, self.previous_secret] if keep and self.previous_secret else [self.secret]


def _endpoint(row: Record | dict[str, Any]) -> Endpoint:
    return Endpoint(**row)


# --- endpoints -----------------------------------------------------------------------------------------

_CREATE = Query(
    sa.insert(webhook_endpoints)
    .values(
        user_id=P("user_id"),
        all_bookings=P("all_bookings"),
        url=P("url"),
        events=P("events", webhook_endpoints.c.events.type),
        description=P("description"),
        active=P("active"),
        secret=P("secret"),
    )
    .returning(*webhook_endpoints.c)
)
_GET = Query(sa.select(webhook_endpoints).where(webhook_endpoints.c.id == P("id")))
_DELETE = Query(sa.delete(webhook_endpoints).where(webhook_endpoints.c.id == P("id")))
_LIST = paged(
    webhook_endpoints,
    where=[webhook_endpoints.c.user_id == P("user_id")],
    order_by=[webhook_endpoints.c.created_at, webhook_endpoints.c.id],
)


async def create_endpoint(
    conn: Connection,
    *,
    user_id: uuid.UUID,
    all_bookings: bool,
    url: str,
    events: list[str],
    description: str | None,
    active: bool,
    secret: str,
) -> Endpoint:
    row = await _CREATE.fetchrow(
        conn,
        user_id=user_id,
        all_bookings=all_bookings,
        url=url,
        events=events,
        description=description,
        active=active,
        secret=secret,
    )
    if row is None:
        raise LookupError("INSERT ... RETURNING returned no row")
    return _endpoint(row)


async def get_endpoint(conn: Connection, endpoint_id: uuid.UUID) -> Endpoint | None:
    row = await _GET.fetchrow(conn, id=endpoint_id)
    return _endpoint(row) if row else None


async def list_endpoints(
    conn: Connection, *, user_id: uuid.UUID, offset: int, limit: int
) -> tuple[list[Endpoint], int]:
    total, rows = await page_of(_LIST, conn, user_id=user_id, offset=offset, limit=limit)
    return [_endpoint(r) for r in rows], total


UPDATABLE = ("url", "events", "description", "active", "disabled_reason", "failing_since")


@cache
def _update(fields: frozenset[str]) -> Query:
    types = {"events": webhook_endpoints.c.events.type}
    return Query(
        sa.update(webhook_endpoints)
        .where(webhook_endpoints.c.id == P("id"))
        .values(
            {**{n: P(n, types.get(n)) for n in sorted(fields)}, "updated_at": sa.func.now()},
        )
        .returning(*webhook_endpoints.c)
    )


async def update_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, values: dict[str, Any]
) -> Endpoint | None:
    unknown = values.keys() - set(UPDATABLE)
    if unknown:
        raise TypeError(f"not updatable: {sorted(unknown)}")
    row = await _update(frozenset(values)).fetchrow(conn, id=endpoint_id, **values)
    return _endpoint(row) if row else None


async def delete_endpoint(conn: Connection, endpoint_id: uuid.UUID) -> bool:
    return await _DELETE.execute(conn, id=endpoint_id) > 0


_ROTATE = Query(
    sa.update(webhook_endpoints)
    .where(webhook_endpoints.c.id == P("id"))
    .values(
        previous_secret=webhook_endpoints.c.secret,
        previous_secret_expires_at=P("keep_until"),
        secret=P("secret"),
        updated_at=sa.func.now(),
    )
    .returning(*webhook_endpoints.c)
)


async def rotate_secret(
    conn: Connection, endpoint_id: uuid.UUID, *, secret: str, keep_until: datetime
) -> Endpoint | None:
    row = await _ROTATE.fetchrow(conn, id=endpoint_id, secret=secret, keep_until=keep_until)
    return _endpoint(row) if row else None


# --- failures: the clock since the last success, disabling ----------------------------------------------

_FAILED = Query(
    sa.update(webhook_endpoints)
    .where(webhook_endpoints.c.id == P("id"))
    .values(failing_since=sa.func.coalesce(webhook_endpoints.c.failing_since, sa.func.now()))
    .returning(webhook_endpoints.c.failing_since, sa.func.now().label("db_now"))
)
_DISABLE = Query(
    sa.update(webhook_endpoints)
    .where(webhook_endpoints.c.id == P("id"), webhook_endpoints.c.active)
    .values(active=False, disabled_reason=P("reason"), updated_at=sa.func.now())
    .returning(*webhook_endpoints.c)
)


async def endpoint_failed(conn: Connection, endpoint_id: uuid.UUID) -> float:
    """Note a failure; how many seconds the endpoint has been failing (since its last success)."""
    row = await _FAILED.fetchrow(conn, id=endpoint_id)
    if row is None:
        return 0.0
    return float((row["db_now"] - row["failing_since"]).total_seconds())


async def disable(conn: Connection, endpoint_id: uuid.UUID, *, reason: str) -> Endpoint | None:
    """Disable an active endpoint; None when it already was (so the owner is told once)."""
    row = await _DISABLE.fetchrow(conn, id=endpoint_id, reason=reason)
    return _endpoint(row) if row else None
