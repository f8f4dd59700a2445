"""Recurring series: create, change and cancel many occurrences as one, inside the owner's actor.

A series is a rule (actors/domain/recurrence.py) and a template; each occurrence is a real booking row under
every constraint a single booking meets, with `series_id` and `occurrence_start` (its RECURRENCE-ID).
Creation is one transaction: conflicts are read first (exactly, under the resource's row lock, for a
capacity-N resource; as a snapshot otherwise), then one statement writes every occurrence ON CONFLICT
DO NOTHING. If that statement wrote fewer rows than asked, a concurrent writer won a slot after the read:
the transaction rolls back and the whole decision is made again, so two overlapping series never both
commit an overlapping occurrence, and `conflictPolicy: "skip"` never skips more than it must.

Lock order (docs/ARCHITECTURE.md): resource rows by id, then booking rows, then the series row; a change
to one occurrence (scope=this) takes them in the same order.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from actors.domain.errors import Conflict, NotFound
from actors.domain.events import Event
from actors.domain.messages import ChangeSeries, CreateSeries, DeleteSeries, SeriesWritten
from actors.domain.recurrence import Rule, instances, parse_rrule
from actors.domain.resources import BUSY_CHANGED, check_hours, check_window, full, retired, unknown_resource
from actors.domain.rules import check_times, check_version
from actors.domain.series import (
    SERIES_EDITABLE,
    TEMPLATE,
    capacity_conflicts,
    field_error,
    plan_occurrences,
    series_view,
)
from actors.domain.views import booking_view, iso
from actors.idempotency import claim, request_hash
from actors.ports import Deps
from actors.reminders import Plan
from storage import bookings as booking_store
from storage import idempotency as idempotency_store
from storage import resource_bookings as resource_booking_store
from storage import resources as resource_store
from storage import series as store
from storage.bookings import Booking
from storage.db import Connection
from storage.errors import Deadlock, Overlap
from storage.resources import Resource
from storage.series import Occurrence, Series

log = logging.getLogger(__name__)

RETRIES = 3


@dataclass
class _Outcome:
    """What the owner's actor does after the commit."""

    plans: list[Plan] = field(default_factory=list)
    queued: list[uuid.UUID] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    busy: dict[uuid.UUID, tuple[datetime, datetime]] = field(default_factory=dict)

    def took(self, b: Booking | None) -> None:
        """Widen the resource.busy.changed span by a booking's busy range."""
        if b is None or b.resource_id is None or b.busy_start is None or b.busy_end is None:
            return
        lo, hi = self.busy.get(b.resource_id, (b.busy_start, b.busy_end))
        self.busy[b.resource_id] = (min(lo, b.busy_start), max(hi, b.busy_end))


class _Raced(Exception):
    """The occurrence statement wrote fewer rows than decided: decide again."""


def _busy(resource: Resource | None, s: datetime, e: datetime) -> tuple[datetime | None, datetime | None]:
    if resource is None:
        return None, None
    return (
        s - timedelta(minutes=resource.buffer_before_minutes),
        e + timedelta(minutes=resource.buffer_after_minutes),
    )


# --- the writer, run inside the owner's actor -------------------------------------------------------------


class SeriesWriter:
    def __init__(self, owner_id: uuid.UUID, deps: Deps) -> None:
        self.owner_id = owner_id
        self.deps = deps

    # --- create -------------------------------------------------------------------------------

    async def create(self, msg: CreateSeries) -> SeriesWritten:
        d = self.deps
        fields = dict(msg.fields)
        recurrence = fields.pop("recurrence")
        policy = fields.pop("conflict_policy", None) or "reject"
        fields.setdefault("reminder_minutes_before", d.rules.default_reminder_minutes)
        zone_name = recurrence.get("time_zone") or msg.default_zone
        zone = ZoneInfo(zone_name)
        rule = parse_rrule(recurrence["rrule"], zone=zone)
        now = d.clock()
        check_times(d.rules, start=fields["start_time"], end=fields["end_time"], now=now, start_changed=True)
        for attempt in range(RETRIES):
            try:
                return await self._create_once(msg, fields, rule, zone_name, policy, recurrence, now)
            except _Raced:
                log.info("a series lost a slot to a concurrent writer; deciding again")
            except Deadlock:
                if attempt == RETRIES - 1:
                    break
        raise Conflict("the series' slots are contended; retry")

    async def _create_once(
        self,
        msg: CreateSeries,
        fields: dict[str, Any],
        rule: Rule,
        zone_name: str,
        policy: str,
        recurrence: Mapping[str, Any],
        now: datetime,
    ) -> SeriesWritten:

        d = self.deps
        zone = ZoneInfo(zone_name)
        resource_id: uuid.UUID | None = fields.pop("resource_id", None)
        out = _Outcome()
        async with d.db.begin() as conn:
            if msg.idempotency_key is not None:
                digest = request_hash({**msg.fields, "recurrence": repr(sorted(recurrence.items()))})
                first = await claim(conn, owner_id=self.owner_id, key=msg.idempotency_key, digest=digest)
                if first is not None:
                    return SeriesWritten(first, replayed=True)
            resource: Resource | None = None
            horizon = now + d.rules.max_advance
            if resource_id is not None:
                # The row lock every capacity-N writer takes: the count below is exact under it.
                resource = (await resource_store.lock_resources(conn, [resource_id])).get(resource_id)
                if resource is None:
                    raise unknown_resource()
                if not resource.active:
                    raise retired(resource)
                check_window(resource, fields["start_time"], now)
                horizon = min(horizon, now + timedelta(days=resource.max_advance_days))
            planned = plan_occurrences(
                rule,
                zone,
                start=fields["start_time"],
                end=fields["end_time"],
                exdates=recurrence.get("exdates") or [],
                horizon=horizon,
            )
            if resource is not None:
                for s, e in planned:
                    check_hours(resource, s, e)
            conflicts = await self._conflicts(conn, resource, planned)
            if conflicts and policy == "reject":
                raise Conflict(
                    f"{len(conflicts)} of {len(planned)} occurrences conflict; nothing was booked",
                    conflicts=[_conflict_view(planned[i], ids) for i, ids in sorted(conflicts.items())],
                )
            keep = [p for i, p in enumerate(planned) if i not in conflicts]
            if not keep:
                raise Conflict(
                    "every occurrence conflicts; nothing was booked",
                    conflicts=[_conflict_view(planned[i], ids) for i, ids in sorted(conflicts.items())],
                )
            series = await store.insert_series(
                conn,
                {
                    "user_id": self.owner_id,
                    "resource_id": resource_id,
                    "rrule": rule.text(),
                    "time_zone": zone_name,
                    "dtstart": fields["start_time"],
                    "duration_seconds": int((fields["end_time"] - fields["start_time"]).total_seconds()),
                    "exdates": [iso(x) for x in recurrence.get("exdates") or []],
                    **{k: fields.get(k) for k in TEMPLATE},
                },
            )
            occurrences = []
            for s, e in keep:
                booking_id = uuid.uuid4()
                plan = (
                    d.reminders.for_new(
                        booking_id=booking_id, minutes=fields["reminder_minutes_before"], start=s
                    )
                    if d.reminders
                    else None
                )
                if plan is not None:
                    out.plans.append(plan)
                bs, be = _busy(resource, s, e)
                occurrences.append(Occurrence(booking_id, s, e, bs, be, plan.due_at if plan else None))
            written, queued = await store.create_occurrences(
                conn,
                actor_id=msg.actor_id,
                series_id=series.id,
                occurrences=occurrences,
                user_id=self.owner_id,
                user_seq=msg.owner_seq,
                resource_id=resource_id,
                resource_seq=resource.seq if resource else None,
                resource_exclusive=resource is not None and resource.capacity == 1,
                template={
                    **{k: fields.get(k) for k in ("title", "description", "location", "notes")},
                    "reminder_minutes_before": fields["reminder_minutes_before"],
                    "attendees": fields.get("attendees") or [],
                },
            )
            if len(written) != len(occurrences):
                raise _Raced  # rolls the transaction back: nothing of this attempt stays
            view = series_view(series, written)
            view["skipped"] = [_conflict_view(planned[i], ids) for i, ids in sorted(conflicts.items())]
            if msg.idempotency_key is not None:
                await idempotency_store.store_idempotent(
                    conn, user_id=self.owner_id, key=msg.idempotency_key, status_code=201, response=view
                )
        out.queued = queued
        for b in written:
            out.events.append(("booking.created", booking_view(b)))
            out.took(b)
        out.events.append(("series.created", _summary(series, written, skipped=len(conflicts))))
        await self.after(out, also=msg.actor_id)
        return SeriesWritten(view)

    async def _conflicts(
        self, conn: Connection, resource: Resource | None, planned: list[tuple[datetime, datetime]]
    ) -> dict[int, list[uuid.UUID]]:
        starts, ends = [s for s, _ in planned], [e for _, e in planned]
        found: dict[int, list[uuid.UUID]] = {
            i: [bid]
            for i, bid in (
                await store.own_overlaps(conn, user_id=self.owner_id, starts=starts, ends=ends)
            ).items()
        }
        if resource is not None:
            busy = [_busy(resource, s, e) for s, e in planned]
            wanted = [(bs, be) for bs, be in busy if bs is not None and be is not None]
            existing = await store.resource_busy(
                conn, resource_seq=resource.seq, starts=[w[0] for w in wanted], ends=[w[1] for w in wanted]
            )
            # Occurrences already refused by the owner's own bookings take no seat.
            free = [i for i in range(len(planned)) if i not in found]
            full = capacity_conflicts(resource.capacity, existing, [wanted[i] for i in free])
            for j, ids in full.items():
                found.setdefault(free[j], []).extend(ids)
        return found

    # --- change following / all ------------------------------------------------------------------

    async def change(self, msg: ChangeSeries) -> dict[str, Any]:
        unknown = set(msg.changes) - SERIES_EDITABLE
        if unknown:
            names = ", ".join(sorted(unknown))
            raise field_error(
                "scope", f"{msg.scope} cannot change {names}; change one occurrence with scope=this"
            )
        for attempt in range(RETRIES):
            try:
                return await self._change_once(msg)
            except Overlap:
                raise Conflict(
                    "an occurrence would overlap another active booking (yours, or the resource's)"
                ) from None
            except Deadlock:
                if attempt == RETRIES - 1:
                    break
        raise Conflict("the series is contended; retry")

    async def _locked(
        self, conn: Connection, booking_id: uuid.UUID, if_match: int | None
    ) -> tuple[Booking, Series, list[Booking], Resource | None]:
        """The occurrence, its series and every occurrence, locked in the one order (resource rows,
        booking rows, series row)."""
        target = await booking_store.get_booking(conn, booking_id)
        if target is None or target.user_id != self.owner_id:
            raise NotFound("booking not found")
        if target.series_id is None:
            raise field_error("scope", "applies to occurrences of a series; this booking is not one")
        peek = await store.get_series(conn, target.series_id)
        if peek is None:  # pragma: no cover  (the foreign key cascades)
            raise NotFound("series not found")
        resource = None
        if peek.resource_id is not None:
            resource = (await resource_store.lock_resources(conn, [peek.resource_id])).get(peek.resource_id)
        rows = await store.occurrences(conn, peek.id, for_update=True)
        series = await store.get_series(conn, peek.id, for_update=True)
        target = next((b for b in rows if b.id == booking_id), None)
        if series is None or target is None:
            raise NotFound("booking not found")
        check_version("series", series.version, if_match)
        return target, series, rows, resource

    async def _change_once(self, msg: ChangeSeries) -> dict[str, Any]:
        from actors.bookings import record_update

        d = self.deps
        now = d.clock()
        out = _Outcome()
        previous: uuid.UUID | None = None
        async with d.db.begin() as conn:
            target, series, rows, resource = await self._locked(conn, msg.booking_id, msg.if_match)
            assert target.occurrence_start is not None  # noqa: S101  (ck_bookings_series_shape)
            pivot = target.occurrence_start
            if msg.scope == "following" and pivot > series.dtstart:
                previous = series.id
                series, rows = await self._split(conn, series, rows, pivot)
            zone = ZoneInfo(series.time_zone)
            changes = dict(msg.changes)
            editable = [b for b in rows if b.status == "scheduled" and b.start_time > now]
            values_all = {k: v for k, v in changes.items() if k not in ("start_time", "end_time")}
            series_values: dict[str, Any] = {k: v for k, v in values_all.items() if k in TEMPLATE}
            new_time: tuple[datetime, timedelta] | None = None  # the new local time of day and length
            if "start_time" in changes or "end_time" in changes:
                started = [b for b in rows if b not in editable and b.status != "cancelled"]
                if started:
                    raise Conflict(
                        f"{len(started)} occurrence(s) of this series already started or ended; change the "
                        "time with scope=following on the next occurrence"
                    )
                elsewhere = [b for b in editable if b.resource_id != series.resource_id]
                if elsewhere:
                    raise Conflict(
                        f"occurrence {elsewhere[0].id} was moved to another resource; change its time with "
                        "scope=this"
                    )
                new_start = changes.get("start_time", target.start_time)
                new_end = changes.get("end_time", target.end_time)
                if new_start.astimezone(zone).date() != target.start_time.astimezone(zone).date():
                    raise field_error(
                        "startTime",
                        "with scope=following|all the time of day may change, not the date (scope=this moves "
                        "one occurrence to another day)",
                    )
                if new_end <= new_start:
                    raise field_error("endTime", "must be after startTime")
                new_time = (new_start, new_end - new_start)
                local = new_start.astimezone(zone)
                dt_local = series.dtstart.astimezone(zone)
                series_values["dtstart"] = dt_local.replace(
                    hour=local.hour, minute=local.minute, second=local.second, fold=0
                ).astimezone(UTC)
                series_values["duration_seconds"] = int(new_time[1].total_seconds())
                series_values["rrule"] = self._keep_until(series, series_values["dtstart"], zone)
            ordered = editable
            if new_time is not None and new_time[0] > target.start_time:
                ordered = list(reversed(editable))  # later first: no occurrence steps on its neighbour
            changed: list[Booking] = []
            for b in ordered:
                values = dict(values_all)
                if new_time is not None:
                    assert b.occurrence_start is not None  # noqa: S101
                    local = new_time[0].astimezone(zone)
                    day = b.occurrence_start.astimezone(zone)
                    start = day.replace(
                        hour=local.hour, minute=local.minute, second=local.second, fold=0
                    ).astimezone(UTC)
                    values.update(start_time=start, end_time=start + new_time[1], occurrence_start=start)
                    check_times(d.rules, start=start, end=start + new_time[1], now=now, start_changed=True)
                    if resource is not None:
                        check_hours(resource, start, start + new_time[1])
                        bs, be = _busy(resource, start, start + new_time[1])
                        values.update(busy_start=bs, busy_end=be)
                        assert bs is not None and be is not None  # noqa: S101
                        in_way = await resource_booking_store.resource_conflicts(
                            conn,
                            resource_seq=resource.seq,
                            busy_start=bs,
                            busy_end=be,
                            capacity=resource.capacity,
                            exclude=b.id,
                        )
                        if in_way:
                            raise full(resource, in_way)
                values = {k: v for k, v in values.items() if getattr(b, k) != v}
                if not values:
                    continue
                if values.get("status") not in (None, "in-progress", "completed", "cancelled"):
                    raise field_error("status", "not a status a scheduled occurrence can take")
                after = await booking_store.update_booking(conn, b.id, values)
                out.queued += await record_update(
                    d, conn, actor_id=msg.actor_id, before=b, after=after, changes=values
                )
                if d.reminders:
                    plan = await d.reminders.in_transaction(conn, after, booking_id=after.id)
                    if plan is not None:
                        out.plans.append(plan)
                out.took(b)
                out.took(after)
                changed.append(after)
            series = await store.update_series(conn, series.id, series_values)
            rows = await store.occurrences(conn, series.id)
        for b in sorted(changed, key=lambda x: x.start_time):
            out.events.append(("booking.updated", booking_view(b)))
        summary = _summary(series, changed, scope=msg.scope)
        if previous is not None:
            summary["previousSeriesId"] = str(previous)
        out.events.append(("series.updated", summary))
        await self.after(out, also=msg.actor_id)
        return series_view(series, rows)

    @staticmethod
    def _keep_until(series: Series, dtstart: datetime, zone: ZoneInfo) -> str:
        """The rule with UNTIL moved to cover its last date at the new time of day (a later time would
        otherwise fall past UNTIL and lose the last occurrence)."""
        rule = parse_rrule(series.rrule, zone=zone)
        if rule.until is None:
            return series.rrule
        last = instances(series.rrule, series.time_zone, series.dtstart)[-1].astimezone(zone)
        moved = last.replace(hour=dtstart.astimezone(zone).hour, minute=dtstart.astimezone(zone).minute)
        return rule.ending(until=max(rule.until, moved.astimezone(UTC))).text()

    async def _split(
        self, conn: Connection, series: Series, rows: list[Booking], pivot: datetime
    ) -> tuple[Series, list[Booking]]:
        """THISANDFUTURE: the series ends before `pivot`; a new one, with the same rule and template,
        starts at it and takes the occurrences from it on."""
        zone = ZoneInfo(series.time_zone)
        rule = parse_rrule(series.rrule, zone=zone)
        found = instances(series.rrule, series.time_zone, series.dtstart)
        rest = [x for x in found if x >= pivot]
        head = rule.ending(until=pivot - timedelta(seconds=1))
        tail = rule.ending(count=len(rest)) if rule.count is not None else rule
        later = [b for b in rows if b.occurrence_start is not None and b.occurrence_start >= pivot]
        new = await store.insert_series(
            conn,
            {
                "user_id": series.user_id,
                "resource_id": series.resource_id,
                "rrule": tail.text(),
                "time_zone": series.time_zone,
                "dtstart": pivot,
                "duration_seconds": series.duration_seconds,
                "exdates": [x for x in series.exdates if x >= iso(pivot)],
                **{k: getattr(series, k) for k in TEMPLATE},
            },
        )
        await store.move_occurrences(conn, [b.id for b in later], new.id)
        if len(later) == len(rows):
            await store.delete_series(conn, series.id)
        else:
            await store.update_series(
                conn,
                series.id,
                {"rrule": head.text(), "exdates": [x for x in series.exdates if x < iso(pivot)]},
            )
        return new, [replace_series(b, new.id) for b in later]

    # --- delete following / all -------------------------------------------------------------------

    async def delete(self, msg: DeleteSeries) -> None:
        for attempt in range(RETRIES):
            try:
                await self._delete_once(msg)
                return
            except Deadlock:
                if attempt == RETRIES - 1:
                    break
        raise Conflict("the series is contended; retry")

    async def _delete_once(self, msg: DeleteSeries) -> None:
        from actors.bookings import record_delete

        d = self.deps
        out = _Outcome()
        async with d.db.begin() as conn:
            target, series, rows, _ = await self._locked(conn, msg.booking_id, msg.if_match)
            assert target.occurrence_start is not None  # noqa: S101
            pivot = target.occurrence_start
            whole = msg.scope == "all" or pivot <= series.dtstart
            gone = rows if whole else [b for b in rows if b.occurrence_start and b.occurrence_start >= pivot]
            for b in gone:
                await booking_store.delete_booking(conn, b.id)
                out.queued += await record_delete(d, conn, actor_id=msg.actor_id, booking=b)
                if d.reminders:
                    plan = await d.reminders.in_transaction(conn, None, booking_id=b.id)
                    if plan is not None:
                        out.plans.append(plan)
                out.took(b)
                out.events.append(("booking.deleted", {"id": str(b.id), "userId": str(b.user_id)}))
            if whole:
                await store.delete_series(conn, series.id)
                out.events.append(
                    (
                        "series.deleted",
                        {"id": str(series.id), "userId": str(series.user_id), "occurrences": len(gone)},
                    )
                )
            else:
                rule = parse_rrule(series.rrule, zone=ZoneInfo(series.time_zone))
                series = await store.update_series(
                    conn, series.id, {"rrule": rule.ending(until=pivot - timedelta(seconds=1)).text()}
                )
                out.events.append(("series.updated", _summary(series, gone, scope=msg.scope, deleted=True)))
        await self.after(out, also=msg.actor_id)

    # --- after the commit --------------------------------------------------------------------------

    async def after(self, out: _Outcome, *, also: uuid.UUID | None) -> None:
        """The Redis copies of the reminders, the webhook messages to the workers, then the events: every
        occurrence's, the series' summary, and one resource.busy.changed per resource (in one round trip)."""

        d = self.deps
        if d.reminders is not None:
            for plan in out.plans:
                await d.reminders.after_commit(plan)
        if d.webhooks is not None and out.queued:
            try:
                await d.webhooks.after_commit(out.queued)
            except Exception:  # the scheduler enqueues them from the outbox; the change stands
                log.exception("webhook messages not handed to the workers; the scheduler will")
        targets = [self.owner_id] + ([also] if also is not None and also != self.owner_id else [])
        events: list[Event] = [d.make_event(name, data) for name, data in out.events]
        busy = tuple(
            (rid, d.make_event(BUSY_CHANGED, {"resourceId": str(rid), "start": iso(lo), "end": iso(hi)}))
            for rid, (lo, hi) in out.busy.items()
        )
        if d.resources is not None:
            await d.resources.publish([(t, e) for t in targets for e in events], busy)
            return
        for t in targets:
            for e in events:
                await d.emitter.emit(t, e)


def replace_series(b: Booking, series_id: uuid.UUID) -> Booking:
    from dataclasses import replace

    return replace(b, series_id=series_id)


def _conflict_view(planned: tuple[datetime, datetime], ids: list[uuid.UUID]) -> dict[str, Any]:
    return {
        "occurrenceStart": iso(planned[0]),
        "startTime": iso(planned[0]),
        "endTime": iso(planned[1]),
        "conflictingIds": [str(i) for i in ids],
    }


def _summary(series: Series, rows: Sequence[Booking], **extra: Any) -> dict[str, Any]:
    return {
        "id": str(series.id),
        "userId": str(series.user_id),
        "version": series.version,
        "occurrenceIds": [str(b.id) for b in rows],
        **extra,
    }


async def touch_for(conn: Connection, booking: Booking) -> dict[str, Any] | None:
    """In the transaction of a change to one occurrence (scope=this): the series' version moves; the
    series.updated summary to emit after the commit."""
    if booking.series_id is None:
        return None
    series = await store.touch(conn, booking.series_id)
    return _summary(series, [booking], scope="this")
