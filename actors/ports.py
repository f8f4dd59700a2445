"""What the actors are built with: their collaborators (ports: the event emitters, the reminder and
webhook hooks, the door to the resource actors) and Deps, the bundle the booking, series and resource
actors and the services share. server/app.py fills them in.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.domain.events import Event
from actors.domain.messages import CreateBooking, UpdateBooking
from actors.domain.rules import Rules as Rules  # server/app.py builds Deps with it
from actors.hub import make_event
from actors.reminders import Plan
from storage.bookings import Booking
from storage.db import Connection, Database
from storage.users import User

# --- collaborators ----------------------------------------------------------------------------------


class Emitter(Protocol):
    async def emit(self, user_id: uuid.UUID, event: Event) -> None: ...


class ResourceEmitter(Protocol):
    async def emit_resource(self, resource_id: uuid.UUID, event: Event) -> None: ...

    async def emit_all(
        self, to_users: list[tuple[uuid.UUID, Event]], to_resources: tuple[tuple[uuid.UUID, Event], ...]
    ) -> None: ...


class WebhookHook(Protocol):
    """Hands the webhook messages a commit wrote to the workers at once (the scheduler would find them
    in the outbox a moment later anyway)."""

    async def after_commit(self, message_ids: list[uuid.UUID]) -> None: ...


class ResourceBookingsPort(Protocol):
    """actors/resources.py: ResourceBookings — the resource actors, behind the owner's actor."""

    async def create(self, owner_id: uuid.UUID, msg: CreateBooking) -> Any: ...

    async def update(self, owner_id: uuid.UUID, msg: UpdateBooking, resource_id: uuid.UUID) -> Any: ...

    async def deleted(self, booking: Booking) -> None: ...

    async def publish(
        self, to_users: list[tuple[uuid.UUID, Event]], to_resources: tuple[tuple[uuid.UUID, Event], ...]
    ) -> None: ...


class ReminderHook(Protocol):
    """Decides the reminder with the booking's transaction; tells Redis after the commit."""

    def for_new(self, *, booking_id: uuid.UUID, minutes: int | None, start: datetime) -> Plan | None: ...

    async def in_transaction(
        self, conn: Connection, booking: Booking | None, *, booking_id: uuid.UUID
    ) -> Plan | None: ...

    async def after_commit(self, plan: Plan) -> None: ...


@dataclass
class Deps:
    db: Database
    emitter: Emitter
    rules: Rules = field(default_factory=Rules)
    reminders: ReminderHook | None = None
    webhooks: WebhookHook | None = None
    make_event: Callable[[str, dict[str, Any]], Event] = make_event
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    resources: ResourceBookingsPort | None = None
    users: Callable[[uuid.UUID], Awaitable[User | None]] | None = None
