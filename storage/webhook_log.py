"""The webhook delivery log: each endpoint's messages with their attempts, redelivery, the CLI's summary
and the purge of settled messages: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from storage.db import Connection, P, Query, page_of, paged
from storage.tables import webhook_attempts, webhook_messages
from storage.webhook_endpoints import Endpoint, _endpoint
from storage.webhook_outbox import Message, _message


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    message_id: uuid.UUID
    attempt: int
    at: datetime
    outcome: str
    response_code: int | None
    latency_ms: float
    response_body: str | None
    error: str | None


# --- the delivery log -----------------------------------------------------------------------------------

_M = webhook_messages.c

_MESSAGES = paged(
    webhook_messages,
    where=[webhook_messages.c.endpoint_id == P("endpoint_id")],
    order_by=[webhook_messages.c.seq.desc()],
)
_ATTEMPTS_OF = Query(
    sa.select(webhook_attempts)
    .where(
        webhook_attempts.c.message_id == sa.func.any(P("ids", sa.ARRAY(webhook_attempts.c.message_id.type)))
    )
    .order_by(webhook_attempts.c.message_id, webhook_attempts.c.id)
)


async def deliveries(
    conn: Connection, *, endpoint_id: uuid.UUID, offset: int, limit: int
) -> tuple[list[tuple[Message, list[Attempt]]], int]:
    """The endpoint's messages, newest first, each with its attempts (oldest first)."""
    total, rows = await page_of(_MESSAGES, conn, endpoint_id=endpoint_id, offset=offset, limit=limit)
    messages = [_message(r) for r in rows]
    attempts: dict[uuid.UUID, list[Attempt]] = {m.id: [] for m in messages}
    if messages:
        for r in await _ATTEMPTS_OF.fetch(conn, ids=[m.id for m in messages]):
            attempts[r["message_id"]].append(Attempt(**r))
    return [(m, attempts[m.id]) for m in messages], total


_GET_MESSAGE = Query(sa.select(webhook_messages).where(webhook_messages.c.id == P("id")))


async def get_message(conn: Connection, message_id: uuid.UUID) -> Message | None:
    row = await _GET_MESSAGE.fetchrow(conn, id=message_id)
    return _message(row) if row else None


_REDELIVER = Query(
    sa.update(webhook_messages)
    .where(webhook_messages.c.id == P("id"), webhook_messages.c.endpoint_id == P("endpoint_id"))
    .values(state="pending", next_attempt_at=sa.func.now(), delivered_at=None, enqueued_at=sa.func.now())
    .returning(*webhook_messages.c)
)


async def redeliver(conn: Connection, *, endpoint_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
    """Send the message again (same webhook-id: receivers that processed it may skip it); the caller
    hands it over."""
    row = await _REDELIVER.fetchrow(conn, id=message_id, endpoint_id=endpoint_id)
    return _message(row) if row else None


_FAILED_OF = Query(
    sa.update(webhook_messages)
    .where(webhook_messages.c.endpoint_id == P("endpoint_id"), webhook_messages.c.state == "failed")
    .values(state="pending", next_attempt_at=sa.func.now(), enqueued_at=None)
    .returning(webhook_messages.c.id)
)


async def redeliver_failed(conn: Connection, *, endpoint_id: uuid.UUID) -> list[uuid.UUID]:
    """Every message the endpoint's schedule gave up on, pending again (the CLI's replay)."""
    return [r["id"] for r in await _FAILED_OF.fetch(conn, endpoint_id=endpoint_id)]


@dataclass(frozen=True, slots=True)
class Summary:
    endpoint: Endpoint
    pending: int
    failed: int
    delivered: int
    last_delivered_at: datetime | None


_SUMMARIES = Query(
    sa.text(
        """
        SELECT e.*,
               count(*) FILTER (WHERE m.state = 'pending') AS pending,
               count(*) FILTER (WHERE m.state = 'failed') AS failed,
               count(*) FILTER (WHERE m.state = 'delivered') AS delivered,
               max(m.delivered_at) AS last_delivered_at
        FROM webhook_endpoints e
        LEFT JOIN webhook_messages m ON m.endpoint_id = e.id
        GROUP BY e.id
        ORDER BY e.created_at, e.id
        """
    )
)


async def summaries(conn: Connection) -> list[Summary]:
    """Every endpoint with its message counts (the CLI's list)."""
    counted = ("pending", "failed", "delivered", "last_delivered_at")
    return [
        Summary(
            _endpoint({k: v for k, v in r.items() if k not in counted}),
            r["pending"],
            r["failed"],
            r["delivered"],
            r["last_delivered_at"],
        )
        for r in await _SUMMARIES.fetch(conn)
    ]


_PURGE_SETTLED = Query(
    sa.delete(webhook_messages).where(
        _M.state.in_(("delivered", "failed")),
        _M.created_at < P("before"),
    )
)


async def purge_settled(conn: Connection, *, older_than: datetime) -> int:
    """Delete delivered and given-up messages (and, by cascade, their attempts) created before
    `older_than`; pending ones stay whatever their age."""
    return await _PURGE_SETTLED.execute(conn, before=older_than)
