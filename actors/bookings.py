"""Bookings: the per-user actor that serializes mutations, and the service REST and WebSocket share.

Every mutation of a user's bookings runs inside that user's actor: validate against the current row,
write (the exclusion constraint is the last word across processes), audit, then emit the event, in
that order, one message at a time. Reads go straight to storage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.base import Event, Handler, Registry
from actors.domain.messages import (
    ChangeSeries,
    CreateBooking,
    Created,
    CreateSeries,
    DeleteBooking,
    DeleteSeries,
    SeriesWritten,
    UpdateBooking,
)
from actors.domain.rules import EDITABLE, check_status_change, check_times, check_version
from actors.domain.rules import Rules as Rules  # server/app.py builds Deps with it
from actors.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from actors.hub import make_event
from actors.idempotency import claim, request_hash
from actors.reminders import Plan
from actors.series import SeriesWriter, touch_for
from actors.views import booking_view
from actors.webhook_rules import BOOKING_DELETED, update_event
from storage import bookings as store
from storage import webhook_outbox as webhook_store
from storage.bookings import Booking, ListFilter
from storage.db import Connection, Database
from storage.errors import Deadlock, Overlap
from storage.users import User

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3


# --- collaborators ----------------------------------------------------------------------------------


class Emitter(Protocol):
    async def emit(self, user_id: uuid.UUID, event: Event) -> None: ...


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


async def record_update(
    d: Deps,
    conn: Connection,
    *,
    actor_id: uuid.UUID,
    before: Booking,
    after: Booking,
    changes: dict[str, Any],
) -> list[uuid.UUID]:
    """In the update's transaction: its audit row and its webhook messages (their ids, to hand off)."""
    return await _record(d, conn, actor_id, "update", before, after, update_event(changes))


async def record_delete(
    d: Deps, conn: Connection, *, actor_id: uuid.UUID, booking: Booking
) -> list[uuid.UUID]:
    """In the delete's transaction: its audit row and its webhook message (their ids, to hand off)."""
    return await _record(d, conn, actor_id, "delete", booking, None, BOOKING_DELETED)


async def _record(
    d: Deps,
    conn: Connection,
    actor_id: uuid.UUID,
    action: str,
    before: Booking,
    after: Booking | None,
    event_type: str,
) -> list[uuid.UUID]:
    await store.audit(
        conn,
        actor_id=actor_id,
        action=action,
        entity_id=before.id,
        before=before.snapshot(),
        after=after.snapshot() if after else None,
    )
    last = after or before
    return await webhook_store.enqueue(
        conn,
        event_type=event_type,
        user_id=last.user_id,
        booking_id=last.id,
        payload={"booking": last.snapshot()},
        handed_off=d.webhooks is not None,
    )


class _Reroute(Exception):
    """A personal-path update found a resource booking: it goes to the resource's actor instead."""

    def __init__(self, resource_id: uuid.UUID) -> None:
        super().__init__(str(resource_id))
        self.resource_id = resource_id


def _conflict(conflicting: uuid.UUID | None) -> Conflict:
    if conflicting is None:
        return Conflict("the booking overlaps another active booking")
    return Conflict(f"the booking overlaps active booking {conflicting}", conflictingId=str(conflicting))


# --- the actor's behaviour ---------------------------------------------------------------------------


class BookingActor:
    """Handles one user's mutation messages; the registry runs one per active user."""

    def __init__(self, owner_id: uuid.UUID, deps: Deps) -> None:
        self.owner_id = owner_id
        self.deps = deps
        self.series = SeriesWriter(owner_id, deps)
        self._dispatch: dict[type, Callable[[Any], Awaitable[Any]]] = {
            CreateBooking: self.create,
            UpdateBooking: self.update,
            DeleteBooking: self.delete,
            CreateSeries: self.series.create,
            ChangeSeries: self.series.change,
            DeleteSeries: self.series.delete,
        }

    async def __call__(self, message: Any) -> Any:
        return await self._dispatch[type(message)](message)

    async def create(self, msg: CreateBooking) -> Created:
        d = self.deps
        fields = dict(msg.fields)
        fields.setdefault("reminder_minutes_before", d.rules.default_reminder_minutes)
        fields.setdefault("attendees", [])
        if fields.get("resource_id") is not None and d.resources is not None:
            return await self._create_on_resource(msg, fields)
        fields.pop("resource_id", None)
        booking_id = uuid.uuid4()
        if msg.idempotency_key is None:
            self._check_new(fields)
            async with d.db.connect() as conn:  # one statement: atomic without a transaction block
                booking, plan, queued = await self._insert(conn, booking_id, fields, msg)
            view = booking_view(booking)
        else:
            digest = request_hash(msg.fields)
            async with d.db.begin() as conn:
                first = await claim(conn, owner_id=self.owner_id, key=msg.idempotency_key, digest=digest)
                if first is not None:
                    return Created(first, replayed=True)
                self._check_new(fields)
                booking, plan, queued = await self._insert(conn, booking_id, fields, msg)
                view = booking_view(booking)
                await store.store_idempotent(
                    conn, user_id=self.owner_id, key=msg.idempotency_key, status_code=201, response=view
                )
        await self._after(plan, "booking.created", view, queued, also=msg.actor_id)
        return Created(view)

    async def _create_on_resource(self, msg: CreateBooking, fields: dict[str, Any]) -> Created:
        """Written by the resource's actor (actors/resources.py); the events go out from here, in this
        user's order."""
        assert self.deps.resources is not None  # noqa: S101
        written = await self.deps.resources.create(self.owner_id, replace(msg, fields=fields))
        created: Created = written.created or Created(written.view)
        if not created.replayed:
            await self._after(
                written.plan,
                "booking.created",
                written.view,
                written.queued,
                also=msg.actor_id,
                resource_events=written.busy,
            )
        return created

    def _check_new(self, fields: Mapping[str, Any]) -> None:
        check_times(
            self.deps.rules,
            start=fields["start_time"],
            end=fields["end_time"],
            now=self.deps.clock(),
            start_changed=True,
        )

    async def _insert(
        self, conn: Connection, booking_id: uuid.UUID, fields: dict[str, Any], msg: CreateBooking
    ) -> tuple[Booking, Plan | None, list[uuid.UUID]]:
        """The create statement: booking, audit row, reminder row and webhook messages together, or 409."""
        d = self.deps
        plan = (
            d.reminders.for_new(
                booking_id=booking_id, minutes=fields["reminder_minutes_before"], start=fields["start_time"]
            )
            if d.reminders
            else None
        )
        values = {name: fields.get(name) for name in store.NEW_BOOKING_FIELDS}
        values.update(id=booking_id, user_id=self.owner_id, user_seq=msg.owner_seq)
        created = await store.create_booking(
            conn, actor_id=msg.actor_id, reminder_due_at=plan.due_at if plan else None, **values
        )
        if created is None:
            raise _conflict(
                await store.find_overlap(
                    conn, user_seq=msg.owner_seq, start=fields["start_time"], end=fields["end_time"]
                )
            )
        booking, queued = created
        return booking, plan, queued

    async def update(self, msg: UpdateBooking) -> dict[str, Any]:
        if msg.resource_id is not None and self.deps.resources is not None:
            return await self._update_on_resource(msg, msg.resource_id)
        for attempt in range(DEADLOCK_RETRIES):
            try:
                return await self._update_once(msg)
            except _Reroute as reroute:
                return await self._update_on_resource(msg, reroute.resource_id)
            except Overlap:
                raise await self._overlap(msg) from None
            except Deadlock:
                if attempt == DEADLOCK_RETRIES - 1:
                    break
                log.info("deadlock on booking update; retrying")
        raise Conflict("the booking is contended; retry")

    async def _overlap(self, msg: UpdateBooking) -> Conflict:
        """The exclusion constraint refused the update: name the booking in the way, if it is still there."""
        async with self.deps.db.connect() as conn:
            current = await store.get_booking(conn, msg.booking_id)
            start = msg.changes.get("start_time", current.start_time if current else None)
            end = msg.changes.get("end_time", current.end_time if current else None)
            other = None
            if current and start and end:
                other = await store.find_overlap(
                    conn, user_seq=current.user_seq, start=start, end=end, exclude=current.id
                )
        return _conflict(other)

    async def _update_once(self, msg: UpdateBooking) -> dict[str, Any]:
        d = self.deps
        plan: Plan | None = None
        queued: list[uuid.UUID] = []
        async with d.db.begin() as conn:
            current = await store.get_booking(conn, msg.booking_id, for_update=True)
            if current is None or current.user_id != self.owner_id:
                raise NotFound("booking not found")
            if current.resource_id is not None and self.deps.resources is not None:
                raise _Reroute(current.resource_id)  # leaves the transaction: no lock held on the way
            check_version("booking", current.version, msg.if_match)
            changes = {k: v for k, v in msg.changes.items() if getattr(current, k) != v}
            if not changes:
                return booking_view(current)
            new_status = changes.get("status")
            edits = {k for k in changes if k in EDITABLE}
            check_status_change(current.status, new_status)
            if edits & {"start_time", "end_time"}:
                check_times(
                    d.rules,
                    start=changes.get("start_time", current.start_time),
                    end=changes.get("end_time", current.end_time),
                    now=d.clock(),
                    start_changed="start_time" in changes,
                )
            booking = await store.update_booking(conn, current.id, changes)
            queued = await record_update(
                d, conn, actor_id=msg.actor_id, before=current, after=booking, changes=changes
            )
            summary = await touch_for(conn, booking)
            if d.reminders:
                plan = await d.reminders.in_transaction(conn, booking, booking_id=booking.id)
        view = booking_view(booking)
        await self._after(plan, "booking.updated", view, queued, also=msg.actor_id, summary=summary)
        return view

    async def _update_on_resource(self, msg: UpdateBooking, resource_id: uuid.UUID) -> dict[str, Any]:
        assert self.deps.resources is not None  # noqa: S101
        written = await self.deps.resources.update(self.owner_id, msg, resource_id)
        view: dict[str, Any] = written.view
        if not written.changed:
            return view
        await self._after(
            written.plan,
            "booking.updated",
            view,
            written.queued,
            also=msg.actor_id,
            resource_events=written.busy,
            summary=written.summary,
        )
        return view

    async def delete(self, msg: DeleteBooking) -> None:
        d = self.deps
        plan: Plan | None = None
        async with d.db.begin() as conn:
            current = await store.get_booking(conn, msg.booking_id, for_update=True)
            if current is None or current.user_id != self.owner_id:
                raise NotFound("booking not found")
            check_version("booking", current.version, msg.if_match)
            await store.delete_booking(conn, current.id)
            queued = await record_delete(d, conn, actor_id=msg.actor_id, booking=current)
            if d.reminders:
                plan = await d.reminders.in_transaction(conn, None, booking_id=current.id)
            summary = await touch_for(conn, current)
        await self._after(
            plan,
            "booking.deleted",
            {"id": str(current.id), "userId": str(self.owner_id)},
            queued,
            also=msg.actor_id,
            summary=summary,
        )
        if current.resource_id is not None and d.resources is not None:
            await d.resources.deleted(current)  # its seat is free: resource.busy.changed to the watchers

    async def _after(
        self,
        plan: Plan | None,
        name: str,
        data: dict[str, Any],
        queued: Sequence[uuid.UUID] = (),
        *,
        also: uuid.UUID | None = None,
        resource_events: tuple[tuple[uuid.UUID, Event], ...] = (),
        summary: dict[str, Any] | None = None,
    ) -> None:
        """After the commit: the Redis copy of the reminder, the webhook messages to the workers, then
        the events (the owner's, an acting admin's, the resource's watchers'; for an occurrence, its
        series' `series.updated` summary after its own)."""
        d = self.deps
        if d.reminders and plan is not None:
            try:
                await d.reminders.after_commit(plan)
            except Exception:  # the reconciler re-schedules from PostgreSQL; the change stands
                log.exception("reminder scheduling failed for %s", plan.booking_id)
        if d.webhooks and queued:
            try:
                await d.webhooks.after_commit(list(queued))
            except Exception:  # the scheduler enqueues them from the outbox; the change stands
                log.exception("webhook messages not handed to the workers; the scheduler will")
        events = [d.make_event(name, data)]
        if summary is not None:
            events.append(d.make_event("series.updated", summary))
        targets = [self.owner_id]
        if also is not None and also != self.owner_id:  # an admin acting for the owner sees it too
            targets.append(also)
        if (resource_events or summary) and d.resources is not None:
            await d.resources.publish([(t, e) for t in targets for e in events], resource_events)
            return
        for target in targets:
            for event in events:
                await d.emitter.emit(target, event)


def actor_factory(deps: Deps) -> Callable[[uuid.UUID], Handler]:
    def make(owner_id: uuid.UUID) -> Handler:
        return BookingActor(owner_id, deps)

    return make


# --- the service REST and WebSocket call ---------------------------------------------------------------


class BookingService:
    def __init__(self, deps: Deps, registry: Registry[uuid.UUID]) -> None:
        self.deps = deps
        self.registry = registry

    async def create(
        self, actor: User, fields: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Created | SeriesWritten:
        """A booking, or with `recurrence` a series of them (SeriesWritten)."""
        fields = dict(fields)
        owner = await self._on_behalf_of(actor, fields.pop("user_id", None))
        if fields.get("recurrence") is not None:
            series: SeriesWritten = await self.registry.ask(
                owner.id, CreateSeries(actor.id, owner.seq, fields, owner.time_zone, idempotency_key)
            )
            return series
        fields.pop("recurrence", None)
        if fields.pop("conflict_policy", None) is not None:
            raise ValidationFailed(
                "conflictPolicy applies to a series", [FieldError("conflictPolicy", "needs recurrence")]
            )
        result: Created = await self.registry.ask(
            owner.id, CreateBooking(actor.id, owner.seq, fields, idempotency_key)
        )
        return result

    async def get_series(self, actor: User, series_id: uuid.UUID) -> dict[str, Any]:
        from actors.domain.series import series_view
        from storage import series as series_store

        async with self.deps.db.connect() as conn:
            series = await series_store.get_series(conn, series_id)
            if series is None or (series.user_id != actor.id and not actor.is_admin):
                raise NotFound("series not found")
            rows = await series_store.occurrences(conn, series_id)
        return series_view(series, rows)

    async def _on_behalf_of(self, actor: User, user_id: uuid.UUID | None) -> User:
        """Whose booking a create makes: the caller's, or (admins only) `userId`'s."""
        if user_id is None or user_id == actor.id:
            return actor
        if not actor.is_admin:
            raise Forbidden("only admins may book for another user")
        owner = await self.deps.users(user_id) if self.deps.users is not None else None
        if owner is None:
            raise ValidationFailed("no such user", [FieldError("userId", "no user has this id")])
        if not owner.active:
            raise Conflict(f"user {user_id} is suspended and cannot be booked for")
        return owner

    async def update(
        self,
        actor: User,
        booking_id: uuid.UUID,
        changes: Mapping[str, Any],
        *,
        if_match: int | None = None,
        scope: str = "this",
    ) -> dict[str, Any]:
        """scope=this changes the booking (If-Match: its version); following|all change its series from
        this occurrence on, or all of it (If-Match: the series' version) and return the series."""
        if not changes:
            raise ValidationFailed("nothing to change", [FieldError("body", "give at least one field")])
        booking = await self.get(actor, booking_id)
        if scope != "this":
            series: dict[str, Any] = await self.registry.ask(
                booking.user_id, ChangeSeries(actor.id, booking_id, dict(changes), scope, if_match)
            )
            return series
        # The resource actor that writes it: the one it moves to, else its own (None: a personal one).
        resource_id = changes.get("resource_id") or booking.resource_id
        result: dict[str, Any] = await self.registry.ask(
            booking.user_id, UpdateBooking(actor.id, booking_id, dict(changes), if_match, resource_id)
        )
        return result

    async def delete(
        self, actor: User, booking_id: uuid.UUID, *, if_match: int | None = None, scope: str = "this"
    ) -> None:
        owner = await self._owner(actor, booking_id)
        if scope != "this":
            await self.registry.ask(owner, DeleteSeries(actor.id, booking_id, scope, if_match))
            return
        await self.registry.ask(owner, DeleteBooking(actor.id, booking_id, if_match))

    async def get(self, actor: User, booking_id: uuid.UUID) -> Booking:
        async with self.deps.db.connect() as conn:
            booking = await store.get_booking(conn, booking_id)
        if booking is None or (booking.user_id != actor.id and not actor.is_admin):
            raise NotFound("booking not found")
        return booking

    async def list_page(
        self,
        actor: User,
        *,
        page: int,
        limit: int,
        user_id: uuid.UUID | None = None,
        start_from: datetime | None = None,
        start_to: datetime | None = None,
        status: str | None = None,
    ) -> tuple[list[Booking], int]:
        scope = self._scope(actor, user_id)
        async with self.deps.db.connect() as conn:
            return await store.list_bookings(
                conn, ListFilter(scope, start_from, start_to, status), offset=(page - 1) * limit, limit=limit
            )

    async def upcoming(self, actor: User, *, limit: int, user_id: uuid.UUID | None = None) -> list[Booking]:
        async with self.deps.db.connect() as conn:
            return await store.upcoming(
                conn, user_id=self._scope(actor, user_id), now=self.deps.clock(), limit=limit
            )

    async def past(self, actor: User, *, limit: int, user_id: uuid.UUID | None = None) -> list[Booking]:
        async with self.deps.db.connect() as conn:
            return await store.past(
                conn, user_id=self._scope(actor, user_id), now=self.deps.clock(), limit=limit
            )

    async def history(
        self, actor: User, booking_id: uuid.UUID, *, page: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        if not actor.is_admin:
            raise Forbidden("admin role required")
        async with self.deps.db.connect() as conn:
            entries, total = await store.audit_entries(
                conn, entity_id=booking_id, offset=(page - 1) * limit, limit=limit
            )
        if total == 0:  # every booking's creation is audited, deleted ones included: this id never was one
            raise NotFound(f"no booking with id {booking_id}")
        return entries, total

    @staticmethod
    def _scope(actor: User, user_id: uuid.UUID | None) -> uuid.UUID | None:
        """Whose bookings a list shows: your own; an admin sees `userId`'s, or everyone's without it."""
        if actor.is_admin:
            return user_id
        if user_id is not None and user_id != actor.id:
            raise Forbidden("only admins may list another user's bookings")
        return actor.id

    async def _owner(self, actor: User, booking_id: uuid.UUID) -> uuid.UUID:
        return (await self.get(actor, booking_id)).user_id
