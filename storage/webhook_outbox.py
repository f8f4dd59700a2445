"""The webhook outbox: messages written in the transaction of the change they report, and what is due to
be handed to the workers: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from storage.db import Connection, P, Query, Record
from storage.tables import webhook_endpoints, webhook_messages


@dataclass(frozen=True, slots=True)
class Message:
    id: uuid.UUID
    seq: int
    endpoint_id: uuid.UUID
    event_type: str
    booking_id: uuid.UUID | None
    payload: dict[str, Any]
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    locked_until: datetime | None
    enqueued_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None


def _message(row: Record | dict[str, Any]) -> Message:
    return Message(**{k: row[k] for k in Message.__slots__})


# --- the outbox: written in the transaction of the change ------------------------------------------------


def _subscribed(event_type: str, user_id: Any) -> list[sa.ColumnElement[bool]]:
    """The endpoints that get `event_type` for a booking of `user_id`: active, the owner's or an
    all-bookings one, subscribed to the event or to `*`. `event_type` is a catalogue constant."""
    e = webhook_endpoints.c
    wanted: sa.ColumnElement[Any] = sa.literal_column(f"ARRAY['{event_type}', '*']::text[]")
    return [e.active, sa.or_(e.user_id == user_id, e.all_bookings), e.events.overlap(wanted)]


def outbox_cte(created: Any, event_type: str) -> Any:
    """The create statement's part (storage/bookings.py): one message per subscribed endpoint, in the
    same statement as the booking it reports."""
    return (
        sa.insert(webhook_messages)
        .from_select(
            ["endpoint_id", "event_type", "booking_id", "payload", "enqueued_at"],
            sa.select(
                webhook_endpoints.c.id,
                sa.literal_column(f"'{event_type}'"),
                created.c.id,
                sa.func.jsonb_build_object(
                    sa.literal_column("'booking'"), sa.func.to_jsonb(created.table_valued())
                ),
                sa.func.now(),  # the web process hands them to the stream right after the commit
            )
            .select_from(created)
            .join(webhook_endpoints, sa.true())
            .where(*_subscribed(event_type, created.c.user_id)),
        )
        .returning(webhook_messages.c.id)
        .cte(f"queued_{event_type.replace('.', '_')}")
    )


def outbox_sql(event_type: str, source: str = "created") -> str:
    """outbox_cte as SQL text, for statements written as text (storage/resource_bookings.py): one message per
    subscribed endpoint about each row of the CTE `source`. Keep the two in step."""
    return f"""
        INSERT INTO webhook_messages (endpoint_id, event_type, booking_id, payload, enqueued_at)
        SELECT e.id, '{event_type}', {source}.id, jsonb_build_object('booking', to_jsonb({source})), now()
        FROM {source} JOIN webhook_endpoints e ON true
        WHERE e.active AND (e.user_id = {source}.user_id OR e.all_bookings)
          AND e.events && ARRAY['{event_type}', '*']::text[]
        RETURNING id
    """  # noqa: S608  (module constants, no input)


@cache
def _enqueue(event_type: str, handed_off: bool) -> Query:
    return Query(
        sa.insert(webhook_messages)
        .from_select(
            ["endpoint_id", "event_type", "booking_id", "payload", "enqueued_at"],
            sa.select(
                webhook_endpoints.c.id,
                sa.literal_column(f"'{event_type}'"),
                P("booking_id", webhook_messages.c.booking_id.type),
                P("payload", webhook_messages.c.payload.type),
                sa.func.now() if handed_off else sa.null(),
            ).where(*_subscribed(event_type, P("user_id", webhook_endpoints.c.user_id.type))),
        )
        .returning(webhook_messages.c.id)
    )


async def enqueue(
    conn: Connection,
    *,
    event_type: str,
    user_id: uuid.UUID,
    booking_id: uuid.UUID | None,
    payload: dict[str, Any],
    handed_off: bool = True,
) -> list[uuid.UUID]:
    """One message per endpoint subscribed to `event_type` for `user_id`'s bookings; their ids.
    `handed_off`: the caller enqueues them after the commit (the scheduler waits a lease before it
    does); otherwise the scheduler enqueues them at once."""
    rows = await _enqueue(event_type, handed_off).fetch(
        conn, user_id=user_id, booking_id=booking_id, payload=payload
    )
    return [r["id"] for r in rows]


_ENQUEUE_ONE = Query(
    sa.insert(webhook_messages)
    .values(
        endpoint_id=P("endpoint_id"),
        event_type=P("event_type"),
        booking_id=None,
        payload=P("payload", webhook_messages.c.payload.type),
        enqueued_at=sa.func.now(),  # the caller hands it over after the commit
    )
    .returning(*webhook_messages.c)
)


async def enqueue_to(
    conn: Connection, *, endpoint_id: uuid.UUID, event_type: str, payload: dict[str, Any]
) -> Message:
    """A message to one endpoint whatever it subscribes to (`webhook.test`)."""
    row = await _ENQUEUE_ONE.fetchrow(conn, endpoint_id=endpoint_id, event_type=event_type, payload=payload)
    if row is None:
        raise LookupError("INSERT ... RETURNING returned no row")
    return _message(row)


# --- the scheduler: what is due --------------------------------------------------------------------------

_M = webhook_messages.c

_DUE = Query(
    sa.text(
        """
        UPDATE webhook_messages AS m SET enqueued_at = now()
        FROM (
            SELECT id, next_attempt_at FROM (
                SELECT c.id, c.next_attempt_at,
                       row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.seq) AS place
                FROM webhook_messages c
                JOIN webhook_endpoints e ON e.id = c.endpoint_id AND e.active
                WHERE c.state = 'pending'
                  AND c.next_attempt_at <= now()
                  AND c.created_at < now() - make_interval(secs => :grace)
                  AND (c.locked_until IS NULL OR c.locked_until < now())
                  AND (c.enqueued_at IS NULL OR c.enqueued_at < now() - make_interval(secs => :requeue))
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_messages o
                      WHERE o.endpoint_id = c.endpoint_id AND o.booking_id = c.booking_id
                        AND o.state = 'pending' AND o.seq < c.seq
                  )
            ) ranked
            WHERE place <= :per_endpoint
            ORDER BY next_attempt_at
            LIMIT :batch
        ) AS pick
        WHERE m.id = pick.id AND m.state = 'pending'
          AND (m.enqueued_at IS NULL OR m.enqueued_at < now() - make_interval(secs => :requeue))
        RETURNING m.id
        """
    ).bindparams(
        sa.bindparam("grace", type_=sa.Float),
        sa.bindparam("requeue", type_=sa.Float),
        sa.bindparam("per_endpoint", type_=sa.Integer),
        sa.bindparam("batch", type_=sa.Integer),
    )
)


async def take_due(
    conn: Connection, *, grace: float, requeue: float, per_endpoint: int, batch: int
) -> list[uuid.UUID]:
    """Due messages to enqueue, marked enqueued: the heads of each booking's line per endpoint, at most
    `per_endpoint` per endpoint, none enqueued in the last `requeue` seconds (a lost task is sent again
    after that), none younger than `grace` (the web process's own enqueue gets that long)."""
    rows = await _DUE.fetch(conn, grace=grace, requeue=requeue, per_endpoint=per_endpoint, batch=batch)
    return [r["id"] for r in rows]


_NEXT_FOR_ENDPOINT = Query(
    sa.text(
        """
        SELECT c.id FROM webhook_messages c
        WHERE c.endpoint_id = :endpoint_id AND c.state = 'pending' AND c.next_attempt_at <= now()
          AND c.enqueued_at IS NULL  -- refused as blocked or busy, or never handed over
          AND (c.locked_until IS NULL OR c.locked_until < now())
          AND NOT EXISTS (
              SELECT 1 FROM webhook_messages o
              WHERE o.endpoint_id = c.endpoint_id AND o.booking_id = c.booking_id
                AND o.state = 'pending' AND o.seq < c.seq
          )
        ORDER BY c.seq
        LIMIT :limit
        """
    ).bindparams(sa.bindparam("endpoint_id"), sa.bindparam("limit", type_=sa.Integer))
)


async def next_for_endpoint(conn: Connection, endpoint_id: uuid.UUID, *, limit: int) -> list[uuid.UUID]:
    """The endpoint's next deliverable messages that no task carries (oldest first): what a finished
    attempt hands on."""
    return [r["id"] for r in await _NEXT_FOR_ENDPOINT.fetch(conn, endpoint_id=endpoint_id, limit=limit)]


_NOT_HANDED_OFF = Query(
    sa.update(webhook_messages)
    .where(_M.id == sa.func.any(P("ids", sa.ARRAY(UUID(as_uuid=True)))), _M.state == "pending")
    .values(enqueued_at=None)
)


async def not_handed_off(conn: Connection, message_ids: list[uuid.UUID]) -> None:
    """The hand-off after the commit failed (Redis down): the scheduler enqueues them at once."""
    await _NOT_HANDED_OFF.execute(conn, ids=message_ids)


_COUNT_PENDING = Query(
    sa.select(sa.func.count()).select_from(webhook_messages).where(webhook_messages.c.state == "pending")
)


async def count_pending(conn: Connection) -> int:
    return int(await _COUNT_PENDING.fetchval(conn))
