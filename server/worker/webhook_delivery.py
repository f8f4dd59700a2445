"""Webhook delivery: the worker's task, the scheduler's dispatcher and the web process's hand-off
(docs/WEBHOOKS.md). The HTTP side is server/worker/webhook_http.py, the figures
server/worker/webhook_stats.py.

PostgreSQL's outbox (`webhook_messages`) is the truth, as for reminders: a message is written in the
transaction of the change it reports; Redis carries only "deliver message X" tasks. The web process
hands a commit's messages to the stream at once; the scheduler's `Dispatcher` enqueues whatever is due
and not in flight (a retry, a task Redis lost, a message whose worker was killed), and the worker's
claim in PostgreSQL is the guard: one attempt at a time per message, a lease, per-booking order and a
per-endpoint concurrency limit.

No `from __future__ import annotations` here: taskiq resolves the task's dependency annotations at
run time.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from redis.asyncio import Redis
from taskiq import AsyncBroker, TaskiqDepends, TaskiqEvents, TaskiqMessage, TaskiqState

from actors.domain import webhooks as rules
from actors.hub import make_event
from server.base.settings import Settings
from server.bus.events import EventBus
from server.bus.redisgate import RedisDown, RedisGate
from server.worker.webhook_http import Answer, client_session, post
from server.worker.webhook_stats import WebhookStats
from storage import reminders as notification_store
from storage import webhook_claims as claim_store
from storage import webhook_endpoints as endpoint_store
from storage import webhook_outbox as outbox_store
from storage.db import Database

log = logging.getLogger(__name__)

DELIVER_WEBHOOK = "booking.deliver_webhook"
LEASE_MARGIN = 5.0  # a claim's lease outlasts the request timeout by this much


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout: float = rules.TIMEOUT_SECONDS
    retry_base: float = 5.0
    concurrency: int = 4
    production: bool = False

    @property
    def lease(self) -> float:
        return self.timeout + LEASE_MARGIN

    @classmethod
    def of(cls, settings: Settings) -> "DeliveryConfig":
        return cls(
            timeout=settings.webhook_timeout,
            retry_base=settings.webhook_retry_base,
            concurrency=settings.webhook_concurrency,
            production=settings.production,
        )


# --- one delivery ------------------------------------------------------------------------------------------

Kick = Callable[[list[uuid.UUID]], Awaitable[None]]


@dataclass
class Deliverer:
    db: Database
    session: aiohttp.ClientSession
    config: DeliveryConfig
    kick: Kick | None = None  # hands the endpoint's next message on after an attempt
    stats: WebhookStats | None = None
    bus: EventBus | None = None

    async def deliver(self, message_id: uuid.UUID) -> str:
        """Claim the message, POST it once, record the attempt and settle it; the outcome, or why no
        attempt was made (see storage.webhook_claims.claim). Safe to run any number of times."""
        async with self.db.begin() as conn:
            claim = await claim_store.claim(
                conn, message_id, lease=self.config.lease, concurrency=self.config.concurrency
            )
        if isinstance(claim, str):
            return claim
        message, endpoint = claim.message, claim.endpoint
        now = datetime.now(UTC)
        body = rules.body(message.event_type, message.created_at, message.payload)
        headers = rules.headers(endpoint.signing_secrets(now), message.id, now, body)
        answer = await post(self.session, endpoint.url, headers, body, production=self.config.production)
        disabled, following = await self._settle(claim, answer)
        log.log(
            logging.DEBUG if answer.outcome == "delivered" else logging.INFO,
            "webhook %s (%s) attempt %d to endpoint %s: %s%s",
            message.id,
            message.event_type,
            claim.attempt,
            endpoint.id,
            answer.outcome,
            f" ({answer.error})" if answer.error else "",
        )
        if self.stats is not None:
            self.stats.record(answer, retried=claim.attempt > 1)
        if disabled is not None:
            await self._tell_owner(disabled)
        elif following is not None:
            await self._kick_safely(following)
        elif answer.outcome != "delivered" and self.kick is not None:
            await self._hand_on(endpoint.id)
        return answer.outcome

    async def _settle(
        self, claim: claim_store.Claim, answer: Answer
    ) -> tuple[endpoint_store.Endpoint | None, list[uuid.UUID] | None]:
        """Record the attempt; the endpoint when this attempt disabled it, and (after a success) the
        endpoint's next message to hand on."""
        disabled: endpoint_store.Endpoint | None = None
        state, delay = "pending", 0.0
        if answer.outcome == "delivered":
            async with self.db.connect() as conn:  # one statement: no transaction block needed
                settled, next_id = await claim_store.record_delivered(
                    conn,
                    claim,
                    response_code=answer.status or 200,
                    latency_ms=answer.latency_ms,
                    response_body=answer.body or "",
                )
            if not settled:
                self._lease_lost(claim)
            return None, [next_id] if next_id is not None else None
        async with self.db.begin() as conn:
            if answer.outcome == "gone":
                state = "failed"
                disabled = await endpoint_store.disable(
                    conn, claim.endpoint.id, reason="the endpoint answered 410 Gone"
                )
            else:
                next_delay = rules.retry_delay(claim.attempt, base=self.config.retry_base)
                state, delay = ("failed", 0.0) if next_delay is None else ("pending", next_delay)
                failing_for = await endpoint_store.endpoint_failed(conn, claim.endpoint.id)
                if failing_for >= rules.DISABLE_AFTER.total_seconds():
                    disabled = await endpoint_store.disable(
                        conn,
                        claim.endpoint.id,
                        reason=f"failing for {rules.DISABLE_AFTER.days} days without a success",
                    )
            settled = await claim_store.record(
                conn,
                claim,
                outcome=answer.outcome,
                state=state,
                delay=delay,
                response_code=answer.status,
                latency_ms=answer.latency_ms,
                response_body=answer.body,
                error=answer.error,
            )
            if disabled is not None:
                await notification_store.add_notification(
                    conn,
                    user_id=disabled.user_id,
                    kind="system.notification",
                    title="A webhook endpoint was disabled",
                    data={
                        "webhookId": str(disabled.id),
                        "url": disabled.url,
                        "reason": disabled.disabled_reason,
                    },
                )
        if not settled:
            self._lease_lost(claim)
        return disabled, None

    @staticmethod
    def _lease_lost(claim: claim_store.Claim) -> None:
        log.warning(
            "webhook %s attempt %d finished after its lease; a newer attempt owns it",
            claim.message.id,
            claim.attempt,
        )

    async def _tell_owner(self, endpoint: endpoint_store.Endpoint) -> None:
        if self.bus is None:
            return
        event = make_event(
            "system.notification",
            {"message": f"Webhook endpoint {endpoint.url} was disabled: {endpoint.disabled_reason}"},
        )
        try:
            await self.bus.emit(endpoint.user_id, event)
        except Exception as exc:  # the notification row is stored; the live copy is best effort
            log.warning("endpoint-disabled notice not published (%s)", type(exc).__name__)

    async def _hand_on(self, endpoint_id: uuid.UUID) -> None:
        try:
            async with self.db.connect() as conn:
                following = await outbox_store.next_for_endpoint(conn, endpoint_id, limit=1)
        except Exception as exc:  # the dispatcher finds it
            log.warning("next webhook message not found (%s)", type(exc).__name__)
            return
        if following:
            await self._kick_safely(following)

    async def _kick_safely(self, message_ids: list[uuid.UUID]) -> None:
        if self.kick is None:
            return
        try:
            await self.kick(message_ids)
        except Exception as exc:  # the dispatcher finds it
            log.warning("next webhook message not handed on (%s)", type(exc).__name__)


# --- the broker side ---------------------------------------------------------------------------------------


class HandOff:
    """The web process's hand-off of a commit's messages to the workers, behind the RedisGate: a
    booking change never waits on Redis for them. When it fails, the messages are marked not enqueued,
    so the scheduler's dispatcher enqueues them on its next pass (else it would wait a lease)."""

    def __init__(self, kick: Kick, gate: RedisGate, db: Database) -> None:
        self._kick = kick
        self._gate = gate
        self._db = db

    async def after_commit(self, message_ids: list[uuid.UUID]) -> None:
        try:
            await self._gate.call(lambda: self._kick(message_ids), "webhook hand-off")
        except RedisDown as exc:
            log.info("webhook messages not handed to the workers (%s); the scheduler will", exc)
            try:
                async with self._db.connect() as conn:
                    await outbox_store.not_handed_off(conn, message_ids)
            except Exception as db_exc:  # the dispatcher still takes them, one lease later
                log.warning("webhook messages not marked for the scheduler (%s)", type(db_exc).__name__)


def kicker(broker: Any) -> Kick:
    """Enqueue one delivery task per message id on the broker's taskiq stream, in one pipelined round
    trip on one Redis client (taskiq-redis' own `kick` builds a client and makes a round trip per
    message; the dispatcher enqueues hundreds at a time). The messages are the ones `AsyncKicker.kiq`
    sends (no middleware is installed)."""
    redis = Redis(connection_pool=broker.connection_pool)

    async def kick(message_ids: list[uuid.UUID]) -> None:
        if not message_ids:
            return
        pipe = redis.pipeline(transaction=False)
        for message_id in message_ids:
            message = TaskiqMessage(
                task_id=broker.id_generator(),
                task_name=DELIVER_WEBHOOK,
                labels={},
                labels_types={},
                args=[],
                kwargs={"message_id": str(message_id)},
            )
            pipe.xadd(
                broker.queue_name,
                {b"data": broker.formatter.dumps(message).message},
                maxlen=broker.maxlen,
                approximate=broker.approximate,
            )
        await pipe.execute()

    return kick


async def deliver_webhook(message_id: str, state: TaskiqState = TaskiqDepends()) -> str:  # noqa: B008
    """The task: one attempt at one message (the claim makes a duplicate task a no-op)."""
    deliverer: Deliverer = state.webhooks
    return await deliverer.deliver(uuid.UUID(message_id))


def register(broker: AsyncBroker, settings: Settings) -> None:
    """The task and its HTTP client; after server.worker.tasks.register, whose start-up opens `state.db`."""
    broker.register_task(deliver_webhook, task_name=DELIVER_WEBHOOK)
    config = DeliveryConfig.of(settings)

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def startup(state: TaskiqState) -> None:
        state.webhook_session = client_session(production=config.production, timeout=config.timeout)
        state.webhook_stats = WebhookStats(state.redis, prefix=settings.redis_prefix)
        state.webhook_flusher = asyncio.create_task(state.webhook_stats.run(), name="webhook-stats")
        state.webhooks = Deliverer(
            db=state.db,
            session=state.webhook_session,
            config=config,
            kick=kicker(broker),
            stats=state.webhook_stats,
            bus=state.bus,
        )

    async def shutdown(state: TaskiqState) -> None:
        state.webhook_flusher.cancel()
        try:
            async with asyncio.timeout(1.0):
                await state.webhook_stats.flush()  # the last figures, while Redis is still open
        except Exception as exc:
            log.warning("last webhook figures not flushed (%s)", type(exc).__name__)
        await state.webhook_session.close()

    # Before server.worker.tasks' shutdown, which closes the Redis client and the database pool.
    broker.event_handlers[TaskiqEvents.WORKER_SHUTDOWN].insert(0, shutdown)


@dataclass
class Dispatcher:
    """In the scheduler process: enqueues the due messages nobody is delivering — retries whose time
    came, messages whose task Redis lost (flushed, restarted, down at commit), messages whose worker died
    mid-attempt (once the lease ran out). The worker's claim makes a duplicate harmless."""

    db: Database
    kick: Kick
    config: DeliveryConfig
    grace: float = 2.0  # the web process's own hand-off gets this long
    batch: int = 500
    dispatched: int = field(default=0)

    async def once(self) -> int:
        async with self.db.begin() as conn:
            due = await outbox_store.take_due(
                conn,
                grace=self.grace,
                requeue=self.config.lease,
                per_endpoint=self.config.concurrency,
                batch=self.batch,
            )
        if due:
            await self.kick(due)
            self.dispatched += len(due)
            log.info("webhook dispatcher: %d message(s) enqueued", len(due))
        return len(due)
