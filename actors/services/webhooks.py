"""Webhook endpoints and their delivery log: the service the REST handlers call (docs/WEBHOOKS.md).

An endpoint belongs to a user and receives events about that user's bookings; an admin's endpoint may
take every user's (`allBookings`). The owner and admins manage it. The secret is returned only by
create and rotate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from actors.domain import webhooks as rules
from actors.domain.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from actors.domain.views import iso
from storage import webhook_endpoints as store
from storage import webhook_log as log_store
from storage import webhook_outbox as outbox_store
from storage.db import Database
from storage.errors import Deadlock
from storage.users import User
from storage.webhook_endpoints import Endpoint
from storage.webhook_log import Attempt
from storage.webhook_outbox import Message

log = logging.getLogger(__name__)

Kick = Callable[[list[uuid.UUID]], Awaitable[None]]
DELETE_RETRIES = 3


def endpoint_view(e: Endpoint) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "userId": str(e.user_id),
        "url": e.url,
        "events": list(e.events),
        "description": e.description,
        "active": e.active,
        "allBookings": e.all_bookings,
        "disabledReason": e.disabled_reason,
        "failingSince": iso(e.failing_since) if e.failing_since else None,
        "previousSecretExpiresAt": (
            iso(e.previous_secret_expires_at) if e.previous_secret_expires_at else None
        ),
        "createdAt": iso(e.created_at),
        "updatedAt": iso(e.updated_at),
    }


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "at": iso(a.at),
        "outcome": a.outcome,
        "responseCode": a.response_code,
        "latencyMs": a.latency_ms,
        "responseBody": a.response_body,
        "error": a.error,
    }


def delivery_view(m: Message, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    return {
        "id": str(m.id),
        "webhookId": rules.message_id(m.id),
        "eventType": m.event_type,
        "bookingId": str(m.booking_id) if m.booking_id else None,
        "state": m.state,
        "attemptCount": m.attempts,
        "createdAt": iso(m.created_at),
        "nextAttemptAt": iso(m.next_attempt_at) if m.state == "pending" else None,
        "deliveredAt": iso(m.delivered_at) if m.delivered_at else None,
        "lastStatus": m.last_status,
        "attempts": [attempt_view(a) for a in attempts or []],
    }


@dataclass(frozen=True, slots=True)
class WithSecret:
    endpoint: Endpoint
    secret: str


def check_events(events: list[str]) -> list[str]:
    """The subscription as stored: the catalogue names given (each once), or `*` alone."""
    if rules.ALL_EVENTS in events and len(events) > 1:
        raise ValidationFailed(
            "events: `*` already means every event; give it alone",
            [FieldError("events", "`*` must be the only entry")],
        )
    if len(set(events)) != len(events):
        raise ValidationFailed("events: each event once", [FieldError("events", "duplicate entries")])
    return list(events)


# --- URL checks: the domain's rules on the addresses a name resolves to (the I/O is here) --------------


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a literal IP resolves to itself)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise rules.UrlRefused(f"host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]) for info in infos})


async def check_url(url: str, *, production: bool) -> None:
    """At creation and on change: in production an https URL whose every address is public. In
    development and test, any http(s) URL (loopback receivers for tests and laptops)."""
    target = rules.parse_url(url, production=production)
    if production:
        rules.refuse_addresses(target.host, await resolve(target.host, target.port))


async def _check_url(url: str, *, production: bool) -> None:
    try:
        await check_url(url, production=production)
    except rules.UrlRefused as exc:
        raise ValidationFailed(f"url {exc}", [FieldError("url", str(exc))]) from None


class WebhookService:
    def __init__(
        self,
        db: Database,
        *,
        production: bool,
        kick: Kick | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._production = production
        self._kick = kick
        self._clock = clock

    async def create(self, actor: User, fields: Mapping[str, Any]) -> WithSecret:
        all_bookings = bool(fields.get("all_bookings", False))
        if all_bookings and not actor.is_admin:
            raise Forbidden("only admins may subscribe to every user's bookings (allBookings)")
        events = check_events(list(fields["events"]))
        await _check_url(fields["url"], production=self._production)
        secret = rules.new_secret()
        async with self._db.connect() as conn:
            endpoint = await store.create_endpoint(
                conn,
                user_id=actor.id,
                all_bookings=all_bookings,
                url=fields["url"],
                events=events,
                description=fields.get("description"),
                active=bool(fields.get("active", True)),
                secret=secret,
            )
        return WithSecret(endpoint, secret)

    async def list_page(self, actor: User, *, page: int, limit: int) -> tuple[list[Endpoint], int]:
        async with self._db.connect() as conn:
            return await store.list_endpoints(conn, user_id=actor.id, offset=(page - 1) * limit, limit=limit)

    async def get(self, actor: User, endpoint_id: uuid.UUID) -> Endpoint:
        async with self._db.connect() as conn:
            endpoint = await store.get_endpoint(conn, endpoint_id)
        if endpoint is None or (endpoint.user_id != actor.id and not actor.is_admin):
            raise NotFound("webhook endpoint not found")
        return endpoint

    async def update(self, actor: User, endpoint_id: uuid.UUID, changes: Mapping[str, Any]) -> Endpoint:
        if not changes:
            raise ValidationFailed("nothing to change", [FieldError("body", "give at least one field")])
        await self.get(actor, endpoint_id)
        values = dict(changes)
        if "events" in values:
            values["events"] = check_events(list(values["events"]))
        if "url" in values:
            await _check_url(values["url"], production=self._production)
        if values.get("active") is True:  # re-enabled: a fresh start for the 5-day rule
            values.update(disabled_reason=None, failing_since=None)
        async with self._db.connect() as conn:
            updated = await store.update_endpoint(conn, endpoint_id, values)
        if updated is None:
            raise NotFound("webhook endpoint not found")
        return updated

    async def delete(self, actor: User, endpoint_id: uuid.UUID) -> None:
        await self.get(actor, endpoint_id)
        # The delete locks the endpoint, then its messages; a worker's claim or retry locks a message,
        # then its endpoint: the two can deadlock, and PostgreSQL aborts one of them.
        for attempt in range(DELETE_RETRIES):
            try:
                async with self._db.connect() as conn:
                    await store.delete_endpoint(conn, endpoint_id)
                return
            except Deadlock:
                if attempt == DELETE_RETRIES - 1:
                    raise Conflict("the endpoint is being delivered to; retry") from None
                log.info("deadlock deleting webhook endpoint %s; retrying", endpoint_id)

    async def rotate_secret(self, actor: User, endpoint_id: uuid.UUID) -> WithSecret:
        """A new secret; the previous one keeps signing too for 24 h, so receivers can switch over."""
        await self.get(actor, endpoint_id)
        secret = rules.new_secret()
        async with self._db.connect() as conn:
            rotated = await store.rotate_secret(
                conn, endpoint_id, secret=secret, keep_until=self._clock() + rules.ROTATION_OVERLAP
            )
        if rotated is None:
            raise NotFound("webhook endpoint not found")
        return WithSecret(rotated, secret)

    async def deliveries(
        self, actor: User, endpoint_id: uuid.UUID, *, page: int, limit: int
    ) -> tuple[list[tuple[Message, list[Attempt]]], int]:
        await self.get(actor, endpoint_id)
        async with self._db.connect() as conn:
            return await log_store.deliveries(
                conn, endpoint_id=endpoint_id, offset=(page - 1) * limit, limit=limit
            )

    async def redeliver(self, actor: User, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> Message:
        await self.get(actor, endpoint_id)
        async with self._db.connect() as conn:
            message = await log_store.redeliver(conn, endpoint_id=endpoint_id, message_id=delivery_id)
        if message is None:
            raise NotFound("delivery not found")
        await self._hand_over([message.id])
        return message

    async def send_test(self, actor: User, endpoint_id: uuid.UUID) -> Message:
        """A `webhook.test` message to this endpoint, whatever it subscribes to."""
        endpoint = await self.get(actor, endpoint_id)
        async with self._db.connect() as conn:
            message = await outbox_store.enqueue_to(
                conn,
                endpoint_id=endpoint.id,
                event_type=rules.WEBHOOK_TEST,
                payload={"webhookId": str(endpoint.id), "message": "a test event from the booking service"},
            )
        await self._hand_over([message.id])
        return message

    async def _hand_over(self, ids: list[uuid.UUID]) -> None:
        if self._kick is None:
            return
        try:
            await self._kick(ids)
        except Exception as exc:  # the scheduler's dispatcher enqueues it from the outbox
            log.info("webhook message(s) not handed to the workers (%s); the scheduler will", exc)
