"""Bookings: the per-user actor that serializes mutations (the service REST and WebSocket share is
actors/services/bookings.py).

Every mutation of a user's bookings runs inside that user's actor: validate against the current row,
write (the exclusion constraint is the last word across processes), audit, then emit the event, in
that order, one message at a time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from actors.base import Handler
from actors.domain.errors import Conflict, NotFound
from actors.domain.events import Event
from actors.domain.messages import (
    ChangeSeries,
    CreateBooking,
    Created,
    CreateSeries,
    DeleteBooking,
    DeleteSeries,
    UpdateBooking,
)
from actors.domain.rules import EDITABLE, check_status_change, check_times, check_version
from actors.domain.views import booking_view
from actors.domain.webhooks import BOOKING_DELETED, update_event
from actors.idempotency import claim, request_hash
from actors.ports import Deps
from actors.reminders import Plan
from actors.series import SeriesWriter, touch_for
from storage import audit as audit_store
from storage import bookings as store
from storage import idempotency as idempotency_store
from storage import webhook_outbox as webhook_store
from storage.bookings import Booking
from storage.db import Connection
from storage.errors import Deadlock, Overlap

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3


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
    await audit_store.audit(
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
                await idempotency_store.store_idempotent(
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
