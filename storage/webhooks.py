"""Webhook endpoints, the outbox of messages and the attempt log: queries only, no rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from storage.db import Connection, P, Query, Record, page_of, paged
from storage.tables import webhook_attempts, webhook_endpoints, webhook_messages


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


def _endpoint(row: Record | dict[str, Any]) -> Endpoint:
    return Endpoint(**row)


def _message(row: Record | dict[str, Any]) -> Message:
    return Message(**{k: row[k] for k in Message.__slots__})


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
    """outbox_cte as SQL text, for statements written as text (storage/resources.py): one message per
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


# --- the scheduler: what is due --------------------------------------------------------------------------

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


# --- the delivery log -----------------------------------------------------------------------------------

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
