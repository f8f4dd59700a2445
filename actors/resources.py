"""Resources: the per-resource actor that writes their bookings (the admin service over them is
actors/services/resources.py).

Who waits on whom (one fixed order, so no cycle and no deadlock):

    user actor (the owner's)  ──ask──▶  resource actor  ──▶  PostgreSQL
                                                         resource rows FOR UPDATE (by id), then the
                                                         booking row FOR UPDATE

A booking of a resource is still a message to its owner's actor, which keeps the owner's order (its
events are emitted there, one message at a time); that actor hands the write to the resource's actor,
which serializes the writes of one resource in this process. A resource actor never asks a user actor,
and never another resource actor (a booking moving between resources goes to the target's actor; the
database locks both rows in id order). Across processes the database is the last word
(storage/resource_bookings.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from actors.base import Handler, Registry
from actors.domain.errors import Conflict, NotFound, ValidationFailed
from actors.domain.events import Event
from actors.domain.messages import BookResource, ChangeResourceBooking, CreateBooking, Created, UpdateBooking
from actors.domain.resources import (
    BUSY_CHANGED,
    busy_of,
    busy_range,
    check_hours,
    check_window,
    full,
    retired,
    unknown_resource,
)
from actors.domain.rules import EDITABLE, check_status_change, check_times, check_version
from actors.domain.views import booking_view, iso
from actors.idempotency import claim, request_hash
from actors.ports import Deps, ResourceEmitter
from actors.reminders import Plan
from storage import bookings as booking_store
from storage import idempotency as idempotency_store
from storage import resource_bookings as resource_booking_store
from storage import resources as store
from storage.bookings import Booking
from storage.db import Connection
from storage.errors import Deadlock, Overlap
from storage.resources import Resource
from storage.tables import RESOURCE_OVERLAP_CONSTRAINT

log = logging.getLogger(__name__)

RETRIES = 3


# --- booking a resource: the resource's actor --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """What the owner's actor needs after a resource actor's commit."""

    view: dict[str, Any]
    plan: Plan | None
    created: Created | None = None
    # resource.busy.changed for each resource whose busy time changed: published by the owner's actor
    # in the same Redis round trip as its booking.* event.
    busy: tuple[tuple[uuid.UUID, Event], ...] = ()
    changed: bool = True  # False: an update that changed nothing (no event)
    queued: tuple[uuid.UUID, ...] = ()  # webhook messages the commit wrote, for the owner's actor to hand off
    summary: dict[str, Any] | None = None  # an occurrence's change: its series' series.updated


class _Stale(Exception):
    """The booking's resource changed between the routing read and the lock: route again."""


class ResourceActor:
    """Writes the bookings of one resource, one message at a time (the registry runs one per resource)."""

    def __init__(self, resource_id: uuid.UUID, deps: Deps, emitter: ResourceEmitter) -> None:
        self.resource_id = resource_id
        self.deps = deps
        self.emitter = emitter
        # The resource row this actor last read. A capacity-1 create writes with it only if the row is
        # still at that version (checked inside the insert statement), so a change or a retirement made
        # by any process is never missed; a capacity-N create reads the row under its lock anyway.
        self._resource: Resource | None = None
        self._dispatch: dict[type, Callable[[Any], Awaitable[Any]]] = {
            BookResource: self.book,
            ChangeResourceBooking: self.change,
        }

    async def __call__(self, message: Any) -> Any:
        return await self._dispatch[type(message)](message)

    # --- create ----------------------------------------------------------------------------------

    async def book(self, msg: BookResource) -> Written:
        for attempt in range(RETRIES):
            try:
                return await self._book_once(msg)
            except Deadlock:
                if attempt == RETRIES - 1:
                    raise Conflict("the resource is contended; retry") from None
                log.info("deadlock on a resource booking; retrying")
        raise Conflict("the resource is contended; retry")  # pragma: no cover

    async def _book_once(self, msg: BookResource) -> Written:

        d = self.deps
        c = msg.create
        fields = dict(c.fields)
        now = d.clock()
        check_times(d.rules, start=fields["start_time"], end=fields["end_time"], now=now, start_changed=True)
        if c.idempotency_key is None:
            # One statement, no transaction block: capacity 1 decided by the exclusion constraint, capacity
            # N under the resource's row lock taken inside the statement (docs/BENCHMARKS.md).
            for _ in range(RETRIES):
                async with d.db.connect() as conn:
                    known = self._resource
                    if known is None:
                        known = self._resource = await store.get_resource(conn, self.resource_id)
                        if known is None:
                            raise unknown_resource()
                    try:
                        self._check_bookable(known, fields, now)
                    except (ValidationFailed, Conflict):
                        # Refused by the row this actor read earlier: another process may have changed it
                        # since (hours opened, reactivated), so refuse only on a fresh read.
                        fresh = await store.get_resource(conn, self.resource_id)
                        if fresh is None:
                            raise unknown_resource() from None
                        self._resource = fresh
                        if fresh.version == known.version:
                            raise
                        continue
                    written = await self._insert(conn, known, fields, msg, locked=known.capacity > 1)
                    if written is not None:
                        return written
                # The row changed since this actor read it: read it again, decide again.
                self._resource = None
            raise Conflict("the resource is being changed; retry")
        async with d.db.begin() as conn:
            if c.idempotency_key is not None:
                digest = request_hash(c.fields)
                first = await claim(conn, owner_id=msg.owner_id, key=c.idempotency_key, digest=digest)
                if first is not None:
                    return Written(first, None, Created(first, replayed=True))
            # With an Idempotency-Key the key is claimed first, in a transaction: the resource's row
            # lock serializes its writers across processes; the count in the next statement sees every
            # booking the previous holder committed.
            resource = (await store.lock_resources(conn, [self.resource_id])).get(self.resource_id)
            if resource is None:
                raise unknown_resource()
            self._resource = resource
            self._check_bookable(resource, fields, now)
            written = await self._insert(conn, resource, fields, msg)
            assert written is not None  # noqa: S101  (under the row lock the version cannot have moved)
            if c.idempotency_key is not None:
                await idempotency_store.store_idempotent(
                    conn, user_id=msg.owner_id, key=c.idempotency_key, status_code=201, response=written.view
                )
        return replace(written, created=Created(written.view))

    @staticmethod
    def _check_bookable(resource: Resource, fields: Mapping[str, Any], now: datetime) -> None:
        if not resource.active:
            raise retired(resource)
        check_window(resource, fields["start_time"], now)
        check_hours(resource, fields["start_time"], fields["end_time"])

    async def _insert(
        self,
        conn: Connection,
        resource: Resource,
        fields: dict[str, Any],
        msg: BookResource,
        *,
        locked: bool = False,
    ) -> Written | None:
        """The booking written with `resource` as read (None: the row is no longer at that version)."""
        d = self.deps
        booking_id = uuid.uuid4()
        plan = (
            d.reminders.for_new(
                booking_id=booking_id, minutes=fields["reminder_minutes_before"], start=fields["start_time"]
            )
            if d.reminders
            else None
        )
        busy_start, busy_end = busy_range(resource, fields["start_time"], fields["end_time"])
        values = {name: fields.get(name) for name in resource_booking_store.NEW_RESOURCE_BOOKING_FIELDS}
        values.update(
            id=booking_id,
            user_id=msg.owner_id,
            user_seq=msg.create.owner_seq,
            attendees=fields.get("attendees") or [],
            resource_id=resource.id,
            resource_seq=resource.seq,
            busy_start=busy_start,
            busy_end=busy_end,
            resource_exclusive=resource.capacity == 1,
        )
        written = await resource_booking_store.create_resource_booking(
            conn,
            actor_id=msg.create.actor_id,
            reminder_due_at=plan.due_at if plan else None,
            capacity=resource.capacity,
            resource_version=resource.version,
            locked=locked,
            **values,
        )
        if written is None:
            current = await store.get_resource(conn, resource.id)
            if current is None or current.version != resource.version:
                return None
            raise await self._why_not(
                conn,
                resource,
                owner_seq=msg.create.owner_seq,
                start=fields["start_time"],
                end=fields["end_time"],
                busy=(busy_start, busy_end),
            )
        booking = written.booking
        return Written(
            booking_view(booking), plan, busy=busy_events(d, None, booking), queued=tuple(written.webhook_ids)
        )

    async def _why_not(
        self,
        conn: Connection,
        resource: Resource,
        *,
        owner_seq: int,
        start: datetime,
        end: datetime,
        busy: tuple[datetime, datetime],
        exclude: uuid.UUID | None = None,
    ) -> Conflict:
        """The 409 for a write the database refused: the owner's own overlap first, then the resource."""
        mine = await booking_store.find_overlap(
            conn, user_seq=owner_seq, start=start, end=end, exclude=exclude
        )
        if mine is not None:
            return Conflict(f"the booking overlaps active booking {mine}", conflictingId=str(mine))
        if resource.capacity == 1:
            other = await resource_booking_store.exclusive_conflict(
                conn, resource_seq=resource.seq, busy_start=busy[0], busy_end=busy[1], exclude=exclude
            )
            ids = (
                [other]
                if other is not None
                else await resource_booking_store.resource_conflicts(
                    conn,
                    resource_seq=resource.seq,
                    busy_start=busy[0],
                    busy_end=busy[1],
                    capacity=1,
                    exclude=exclude,
                )
            )
            if not ids:  # the booking in the way was cancelled since: a retry may succeed
                return Conflict("the resource is booked at that time; retry", conflictingIds=[])
            return Conflict(
                f"the resource is booked at that time by booking {ids[0]} (buffers included)",
                conflictingId=str(ids[0]),
                conflictingIds=[str(i) for i in ids],
            )
        ids = await resource_booking_store.resource_conflicts(
            conn,
            resource_seq=resource.seq,
            busy_start=busy[0],
            busy_end=busy[1],
            capacity=resource.capacity,
            exclude=exclude,
        )
        return Conflict("resource full", conflictingIds=[str(i) for i in ids])

    # --- move, extend, change resource, cancel ----------------------------------------------------

    async def change(self, msg: ChangeResourceBooking) -> Written:
        for attempt in range(RETRIES):
            try:
                return await self._change_once(msg)
            except _Stale:
                continue
            except Overlap as exc:
                raise await self._exclusion_conflict(msg, exc) from None
            except Deadlock:
                if attempt == RETRIES - 1:
                    raise Conflict("the booking is contended; retry") from None
                log.info("deadlock on a resource booking update; retrying")
        raise Conflict("the booking is contended; retry")

    async def _change_once(self, msg: ChangeResourceBooking) -> Written:
        from actors.bookings import record_update
        from actors.series import touch_for

        d = self.deps
        u = msg.update
        async with d.db.begin() as conn:
            # The resource rows first (in id order), then the booking row: the one lock order.
            peek = await booking_store.get_booking(conn, u.booking_id)
            ids = {
                i for i in (peek.resource_id if peek else None, u.changes.get("resource_id")) if i is not None
            }
            locked = await store.lock_resources(conn, list(ids))
            current = await booking_store.get_booking(conn, u.booking_id, for_update=True)
            if current is None or current.user_id != msg.owner_id:
                raise NotFound("booking not found")
            if current.resource_id is not None and current.resource_id not in locked:
                raise _Stale
            check_version("booking", current.version, u.if_match)
            changes = {k: v for k, v in u.changes.items() if getattr(current, k) != v}
            if not changes:
                return Written(booking_view(current), None, changed=False)
            new_status = changes.get("status")
            check_status_change(current.status, new_status)
            start = changes.get("start_time", current.start_time)
            end = changes.get("end_time", current.end_time)
            now = d.clock()
            if {k for k in changes if k in EDITABLE} & {"start_time", "end_time"}:
                check_times(d.rules, start=start, end=end, now=now, start_changed="start_time" in changes)
            target_id = changes.get("resource_id", current.resource_id)
            values = dict(changes)
            moved = bool({"start_time", "end_time", "resource_id"} & changes.keys())
            target: Resource | None = None
            if target_id is None:
                values.update(resource_seq=None, busy_start=None, busy_end=None, resource_exclusive=False)
            elif moved:
                target = locked.get(target_id)
                if target is None:
                    raise unknown_resource()
                if not target.active:
                    raise retired(target)
                if "start_time" in changes or "resource_id" in changes:
                    check_window(target, start, now)
                check_hours(target, start, end)
                busy = busy_range(target, start, end)
                values.update(
                    resource_seq=target.seq,
                    busy_start=busy[0],
                    busy_end=busy[1],
                    resource_exclusive=target.capacity == 1,
                )
                if changes.get("status", current.status) in ("scheduled", "in-progress"):
                    # Under the target's row lock: exact, whatever other processes write.
                    ids_in_way = await resource_booking_store.resource_conflicts(
                        conn,
                        resource_seq=target.seq,
                        busy_start=busy[0],
                        busy_end=busy[1],
                        capacity=target.capacity,
                        exclude=current.id,
                    )
                    if ids_in_way:
                        raise full(target, ids_in_way)
            booking = await booking_store.update_booking(conn, current.id, values)
            queued = await record_update(
                d, conn, actor_id=u.actor_id, before=current, after=booking, changes=changes
            )
            summary = await touch_for(conn, booking)
            plan = (
                await d.reminders.in_transaction(conn, booking, booking_id=booking.id)
                if d.reminders
                else None
            )
        return Written(
            booking_view(booking),
            plan,
            busy=busy_events(d, current, booking),
            queued=tuple(queued),
            summary=summary,
        )

    async def _exclusion_conflict(self, msg: ChangeResourceBooking, exc: Overlap) -> Conflict:
        """An overlap on update: the owner's constraint or the capacity-1 resource's."""
        u = msg.update
        async with self.deps.db.connect() as conn:
            current = await booking_store.get_booking(conn, u.booking_id)
            if current is None:
                return Conflict("the booking overlaps another active booking")
            start = u.changes.get("start_time", current.start_time)
            end = u.changes.get("end_time", current.end_time)
            if exc.constraint == RESOURCE_OVERLAP_CONSTRAINT:
                target_id = u.changes.get("resource_id", current.resource_id)
                target = await store.get_resource(conn, target_id) if target_id else None
                if target is not None:
                    busy = busy_range(target, start, end)
                    other = await resource_booking_store.exclusive_conflict(
                        conn,
                        resource_seq=target.seq,
                        busy_start=busy[0],
                        busy_end=busy[1],
                        exclude=current.id,
                    )
                    if other is not None:
                        return Conflict(
                            f"the resource is booked at that time by booking {other} (buffers included)",
                            conflictingId=str(other),
                            conflictingIds=[str(other)],
                        )
                return Conflict("the resource is booked at that time; retry", conflictingIds=[])
            mine = await booking_store.find_overlap(
                conn, user_seq=current.user_seq, start=start, end=end, exclude=current.id
            )
        if mine is None:
            return Conflict("the booking overlaps another active booking")
        return Conflict(f"the booking overlaps active booking {mine}", conflictingId=str(mine))


def busy_events(
    deps: Deps, before: Booking | None, after: Booking | None
) -> tuple[tuple[uuid.UUID, Event], ...]:
    """`resource.busy.changed` for each resource whose busy time a change moved, with no details (one
    event per resource, spanning the time freed and the time taken)."""
    was, now = busy_of(before), busy_of(after)
    if was == now:
        return ()
    ranges: dict[uuid.UUID, tuple[datetime, datetime]] = {}
    for held in (was, now):
        if held is None:
            continue
        resource_id, start, end = held
        lo, hi = ranges.get(resource_id, (start, end))
        ranges[resource_id] = (min(lo, start), max(hi, end))
    return tuple(
        (rid, deps.make_event(BUSY_CHANGED, {"resourceId": str(rid), "start": iso(lo), "end": iso(hi)}))
        for rid, (lo, hi) in ranges.items()
    )


# --- what the owner's actor calls ---------------------------------------------------------------------


class ResourceBookings:
    """The door from a user's actor to the resource actors (actors/bookings.py calls it)."""

    def __init__(
        self, registry: Registry[uuid.UUID], emitter: ResourceEmitter, deps_ref: Callable[[], Deps]
    ) -> None:
        self.registry = registry
        self.emitter = emitter
        self._deps = deps_ref

    async def create(self, owner_id: uuid.UUID, msg: CreateBooking) -> Written:
        resource_id = msg.fields["resource_id"]
        written: Written = await self.registry.ask(resource_id, BookResource(owner_id, msg))
        return written

    async def update(self, owner_id: uuid.UUID, msg: UpdateBooking, resource_id: uuid.UUID) -> Written:
        written: Written = await self.registry.ask(resource_id, ChangeResourceBooking(owner_id, msg))
        return written

    async def deleted(self, booking: Booking) -> None:
        for resource_id, event in busy_events(self._deps(), booking, None):
            await self.emitter.emit_resource(resource_id, event)

    async def publish(
        self, to_users: list[tuple[uuid.UUID, Event]], to_resources: tuple[tuple[uuid.UUID, Event], ...]
    ) -> None:
        """The owner's booking.* event and the resources' busy events, in one Redis round trip."""
        await self.emitter.emit_all(to_users, to_resources)


def resource_actor_factory(deps: Deps, emitter: ResourceEmitter) -> Callable[[uuid.UUID], Handler]:
    def make(resource_id: uuid.UUID) -> Handler:
        return ResourceActor(resource_id, deps, emitter)

    return make
