"""One webhook delivery attempt: the worker's claim of a message and the record of its outcome: queries
only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from storage.db import Connection, P, Query
from storage.tables import webhook_attempts, webhook_endpoints, webhook_messages
from storage.webhook_endpoints import Endpoint, _endpoint
from storage.webhook_outbox import Message, _message

# --- delivery: claim, record -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    message: Message
    endpoint: Endpoint
    attempt: int  # this attempt's number: the token that lets only its worker record the outcome


_M = webhook_messages.c
_E = webhook_endpoints.c
# One statement locks the message and its endpoint. The endpoint's lock serializes the claims of one
# endpoint (its concurrency count); NO KEY: a booking commit's foreign-key check on a new message
# (KEY SHARE) does not wait for it.
_LOCK_FOR_CLAIM = Query(
    sa.select(
        webhook_messages,
        *[c.label(f"e_{c.name}") for c in webhook_endpoints.c],
        sa.func.now().label("db_now"),
    )
    .join(webhook_endpoints, _E.id == _M.endpoint_id)
    .where(_M.id == P("id"))
    .with_for_update(key_share=True)
)
_older = sa.alias(webhook_messages, "older")
_OLDER_PENDING = (
    sa.select(_older.c.id)
    .where(
        _older.c.endpoint_id == _M.endpoint_id,
        _older.c.booking_id == _M.booking_id,
        _older.c.state == "pending",
        _older.c.seq < _M.seq,
    )
    .exists()
)
_flying = sa.alias(webhook_messages, "flying")
_IN_FLIGHT = (
    sa.select(sa.func.count())
    .select_from(_flying)
    .where(
        _flying.c.endpoint_id == _M.endpoint_id,
        _flying.c.locked_until.is_not(None),
        _flying.c.locked_until > sa.func.now(),
        _flying.c.state == "pending",
    )
    .scalar_subquery()
)
# A new statement, so a new snapshot: it sees every claim of this endpoint that committed before our
# lock on the endpoint was granted.
_TAKE = Query(
    sa.update(webhook_messages)
    .where(_M.id == P("id"), ~_OLDER_PENDING, P("concurrency", sa.Integer) > _IN_FLIGHT)
    .values(
        attempts=_M.attempts + 1,
        locked_until=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, P("lease", sa.Float)),
        enqueued_at=None,
    )
    .returning(*webhook_messages.c)
)
_WHY_NOT = Query(
    sa.update(webhook_messages)
    .where(_M.id == P("id"))
    .values(enqueued_at=None)  # the scheduler enqueues it again once it can go
    .returning(_OLDER_PENDING.label("blocked"))
)


async def claim(conn: Connection, message_id: uuid.UUID, *, lease: float, concurrency: int) -> Claim | str:
    """Take the message for one attempt (in the caller's transaction), or why not: `done` (delivered
    or given up), `missing`, `inactive` (endpoint disabled), `early` (not due yet), `locked` (another
    worker's attempt is in flight), `blocked` (an older message about the same booking to the same
    endpoint is still pending: per-booking order), `busy` (the endpoint's concurrency limit)."""
    row = await _LOCK_FOR_CLAIM.fetchrow(conn, id=message_id)
    if row is None:
        return "missing"
    message, now = _message(row), row["db_now"]
    if message.state != "pending":
        return "done"
    if message.next_attempt_at > now:
        return "early"
    if message.locked_until is not None and message.locked_until > now:
        return "locked"
    endpoint = _endpoint({c.name: row[f"e_{c.name}"] for c in webhook_endpoints.c})
    if not endpoint.active:
        return "inactive"
    taken = await _TAKE.fetchrow(conn, id=message_id, lease=lease, concurrency=concurrency)
    if taken is None:
        return "blocked" if await _WHY_NOT.fetchval(conn, id=message_id) else "busy"
    claimed = _message(taken)
    return Claim(claimed, endpoint, claimed.attempts)


_DELIVERED = Query(
    sa.text(
        """
        WITH settled AS (
            UPDATE webhook_messages
            SET state = 'delivered', delivered_at = now(), locked_until = NULL, last_status = :code
            WHERE id = :id AND attempts = :attempt AND state = 'pending'
            RETURNING id
        ), logged AS (
            INSERT INTO webhook_attempts
                (message_id, attempt, outcome, response_code, latency_ms, response_body)
            VALUES (:id, :attempt, 'delivered', :code, :latency_ms, :body)
        ), healthy AS (
            UPDATE webhook_endpoints SET failing_since = NULL
            WHERE id = :endpoint_id AND failing_since IS NOT NULL
        )
        SELECT (SELECT count(*) FROM settled) AS settled, (
            -- what this delivery hands on (the statement's snapshot still shows it pending: skipped)
            SELECT c.id FROM webhook_messages c
            WHERE c.endpoint_id = :endpoint_id AND c.id <> :id AND c.state = 'pending'
              AND c.next_attempt_at <= now() AND c.enqueued_at IS NULL
              AND (c.locked_until IS NULL OR c.locked_until < now())
              AND NOT EXISTS (
                  SELECT 1 FROM webhook_messages o
                  WHERE o.endpoint_id = c.endpoint_id AND o.booking_id = c.booking_id
                    AND o.state = 'pending' AND o.seq < c.seq AND o.id <> :id
              )
            ORDER BY c.seq
            LIMIT 1
        ) AS next_id
        """
    ).bindparams(
        sa.bindparam("id", type_=UUID(as_uuid=True)),
        sa.bindparam("endpoint_id", type_=UUID(as_uuid=True)),
        sa.bindparam("attempt", type_=sa.Integer),
        sa.bindparam("code", type_=sa.Integer),
        sa.bindparam("latency_ms", type_=sa.Float),
        sa.bindparam("body", type_=sa.Text),
    )
)


async def record_delivered(
    conn: Connection, claim: Claim, *, response_code: int, latency_ms: float, response_body: str
) -> tuple[bool, uuid.UUID | None]:
    """The happy path of `record` in one statement (no transaction block): the attempt logged, the
    message delivered, the endpoint's failure clock reset; and the endpoint's next message no task
    carries (see `next_for_endpoint`). False when this attempt's lease was lost."""
    row = await _DELIVERED.fetchrow(
        conn,
        id=claim.message.id,
        endpoint_id=claim.endpoint.id,
        attempt=claim.attempt,
        code=response_code,
        latency_ms=latency_ms,
        body=response_body,
    )
    if row is None:
        return False, None
    return bool(row["settled"]), row["next_id"]


_ADD_ATTEMPT = Query(
    sa.insert(webhook_attempts).values(
        message_id=P("message_id"),
        attempt=P("attempt"),
        outcome=P("outcome"),
        response_code=P("response_code"),
        latency_ms=P("latency_ms"),
        response_body=P("response_body"),
        error=P("error"),
    )
)
_SETTLE = Query(
    sa.update(webhook_messages)
    .where(
        webhook_messages.c.id == P("id"),
        webhook_messages.c.attempts == P("attempt"),
        webhook_messages.c.state == "pending",
    )
    .values(
        state=P("state"),
        delivered_at=sa.case((P("state") == "delivered", sa.func.now()), else_=None),
        next_attempt_at=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, P("delay", sa.Float)),
        locked_until=None,
        last_status=P("last_status"),
    )
    .returning(webhook_messages.c.id)
)


async def record(
    conn: Connection,
    claim: Claim,
    *,
    outcome: str,
    state: str,
    delay: float,
    response_code: int | None,
    latency_ms: float,
    response_body: str | None,
    error: str | None,
) -> bool:
    """Log the attempt and settle the message: `delivered`, `failed` (given up) or `pending` again in
    `delay` seconds. False when this attempt's lease was lost (another attempt took over): the log
    keeps the attempt, the message is left to the newer one."""
    await _ADD_ATTEMPT.execute(
        conn,
        message_id=claim.message.id,
        attempt=claim.attempt,
        outcome=outcome,
        response_code=response_code,
        latency_ms=latency_ms,
        response_body=response_body,
        error=error,
    )
    settled = await _SETTLE.fetchval(
        conn, id=claim.message.id, attempt=claim.attempt, state=state, delay=delay, last_status=response_code
    )
    return settled is not None
