"""Working hours, users' own availability, open slots, the next free slot and free/busy.

The rules are actors/domain/availability.py (pure); this service reads what they need from PostgreSQL in as
few statements as it can and shapes the answers. Hours are admin-managed and versioned with their
resource (a change of hours moves the resource's version, so its actor's cached row is re-read before
the next booking is checked against them).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from actors.domain.availability import (
    Busy,
    Hours,
    SlotRules,
    Span,
    hours_of,
    merge,
    next_slot,
    slots,
)
from actors.domain.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from actors.domain.resources import resource_hours
from actors.domain.rules import check_version
from actors.domain.views import iso
from actors.domain.zones import check_zone, known_zones
from actors.ports import Deps, ResourceEmitter
from storage import audit as audit_store
from storage import availability as store
from storage import resources as resource_store
from storage.resources import Resource
from storage.users import User, get_users_by_ids

MAX_WINDOW = timedelta(days=31)
MAX_IDS = 50
# A slot offered starts at least this long after now + minimum notice, so posting it back at once is
# still inside the booking window when the create checks it a moment later.
NOTICE_MARGIN = timedelta(minutes=1)
# How far ahead the admin's list of bookings now outside the hours looks, and how many it names.
OUTSIDE_LIMIT = 1000
HOURS_CHANGED = "resource.hours.changed"


def hours_view(resource: Resource) -> dict[str, Any]:
    return {
        "resourceId": str(resource.id),
        "timeZone": resource.time_zone,
        "weekly": resource.hours_weekly,
        "overrides": resource.hours_overrides,
        "version": resource.version,
        "updatedAt": iso(resource.updated_at),
    }


def availability_view(a: store.StoredAvailability) -> dict[str, Any]:
    return {
        "userId": str(a.user_id),
        "timeZone": a.time_zone,
        "weekly": a.weekly,
        "version": a.version,
        "updatedAt": iso(a.updated_at) if a.updated_at else None,
    }


def span_view(span: Span, zone: ZoneInfo | None = None) -> dict[str, Any]:
    view = {"start": iso(span[0]), "end": iso(span[1])}
    if zone is not None:
        view["localStart"] = span[0].astimezone(zone).isoformat()
        view["localEnd"] = span[1].astimezone(zone).isoformat()
    return view


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field} {message}", [FieldError(field, message)])


def label_zone(asked: str | None, caller: User, resource: Resource) -> ZoneInfo:
    """The zone of a slot's localStart/localEnd: the `timeZone` the caller asked for; else the caller's
    own zone (PATCH /api/auth/me); else, while that is still UTC (every account's until it is set, and
    labels in UTC would only repeat `start`/`end`), the resource's. Only labels: the grid and the hours
    stay in the resource's zone whatever the labels say (docs/AVAILABILITY.md)."""
    if asked:
        return check_zone(asked)
    if caller.time_zone != "UTC" and caller.time_zone in known_zones():
        return ZoneInfo(caller.time_zone)
    return ZoneInfo(resource.time_zone)


def _check_window(start: datetime, end: datetime) -> None:
    if end <= start:
        raise _invalid("to", "must be after from")
    if end - start > MAX_WINDOW:
        raise _invalid("to", f"the window may span at most {MAX_WINDOW.days} days")


@dataclass(frozen=True, slots=True)
class HoursChange:
    resource: Resource
    outside: list[tuple[uuid.UUID, datetime, datetime]]


class AvailabilityService:
    def __init__(self, deps: Deps, emitter: ResourceEmitter | None = None) -> None:
        self.deps = deps
        self.emitter = emitter

    # --- working hours --------------------------------------------------------------------------

    async def _resource(self, resource_id: uuid.UUID) -> Resource:
        async with self.deps.db.connect() as conn:
            found = await resource_store.get_resource(conn, resource_id)
        if found is None:
            raise NotFound("resource not found")
        return found

    async def hours(self, actor: User, resource_id: uuid.UUID) -> Resource:
        return await self._resource(resource_id)

    async def set_hours(
        self,
        actor: User,
        resource_id: uuid.UUID,
        *,
        weekly: list[dict[str, Any]] | None,
        overrides: list[dict[str, Any]],
        if_match: int | None = None,
    ) -> HoursChange:
        if not actor.is_admin:
            raise Forbidden("admin role required")
        async with self.deps.db.begin() as conn:
            # The resource row lock its booking writers take: hours change between bookings, never
            # in the middle of one; the version bump tells every actor's cached row to re-read.
            current = await resource_store.get_resource(conn, resource_id, for_update=True)
            if current is None:
                raise NotFound("resource not found")
            check_version("resource", current.version, if_match)
            try:
                hours = hours_of(ZoneInfo(current.time_zone), weekly, overrides)
            except ValueError as exc:
                raise _invalid("weekly" if "overlap" in str(exc) else "overrides", str(exc)) from None
            changed = await resource_store.update_resource(
                conn, resource_id, {"hours_weekly": weekly, "hours_overrides": overrides}
            )
            await audit_store.audit(
                conn,
                actor_id=actor.id,
                action="hours",
                entity="resource",
                entity_id=resource_id,
                before={"weekly": current.hours_weekly, "overrides": current.hours_overrides},
                after={"weekly": weekly, "overrides": overrides},
            )
            now = self.deps.clock()
            ahead = timedelta(days=current.max_advance_days) + self.deps.rules.max_duration
            upcoming = await store.upcoming(
                conn, resource_seq=current.seq, start=now, end=now + ahead, limit=OUTSIDE_LIMIT
            )
        outside = [b for b in upcoming if not hours.contains(b[1], b[2])]
        if self.emitter is not None:
            event = self.deps.make_event(
                HOURS_CHANGED, {"resourceId": str(resource_id), "version": changed.version}
            )
            await self.emitter.emit_resource(resource_id, event)
        return HoursChange(changed, outside)

    # --- a user's own availability --------------------------------------------------------------

    async def mine(self, actor: User) -> store.StoredAvailability:
        async with self.deps.db.connect() as conn:
            return await store.get_availability(conn, actor.id)

    async def set_mine(
        self, actor: User, *, time_zone: str, weekly: list[dict[str, Any]] | None, if_match: int | None = None
    ) -> store.StoredAvailability:
        zone = check_zone(time_zone)
        try:
            hours_of(zone, weekly)
        except ValueError as exc:
            raise _invalid("weekly", str(exc)) from None
        async with self.deps.db.begin() as conn:
            current = await store.get_availability(conn, actor.id, for_update=True)
            check_version("availability", current.version, if_match)
            return await store.put_availability(conn, actor.id, time_zone=time_zone, weekly=weekly)

    # --- slots ------------------------------------------------------------------------------------

    def _rules(self, resource: Resource, duration: timedelta, step: timedelta) -> SlotRules:
        if duration > self.deps.rules.max_duration:
            raise _invalid("duration", f"a booking may last at most {self.deps.rules.max_duration.days} days")
        if not resource.active:
            raise Conflict(f"resource {resource.id} is retired and takes no new bookings")
        now = self.deps.clock()
        advance = min(timedelta(days=resource.max_advance_days), self.deps.rules.max_advance)
        return SlotRules(
            duration=duration,
            step=step,
            buffer_before=timedelta(minutes=resource.buffer_before_minutes),
            buffer_after=timedelta(minutes=resource.buffer_after_minutes),
            earliest=now + timedelta(minutes=resource.min_notice_minutes) + NOTICE_MARGIN,
            latest_start=now + advance,
        )

    async def _busy(
        self, actor: User, resource: Resource, rules: SlotRules, start: datetime, end: datetime
    ) -> tuple[Busy, Busy]:
        """The resource's full time and the caller's own booked time that slots starting in [start, end)
        can meet: two indexed range reads, the full time merged in PostgreSQL."""
        reach_from, reach_to = start - rules.buffer_before, end + rules.duration + rules.buffer_after
        async with self.deps.db.connect() as conn:
            full = await store.resource_full(
                conn, resource_seq=resource.seq, capacity=resource.capacity, start=reach_from, end=reach_to
            )
            mine = await store.user_busy(conn, user_seq=actor.seq, start=start, end=end + rules.duration)
        return Busy(full), Busy.of(mine)

    async def slots(
        self,
        actor: User,
        resource_id: uuid.UUID,
        *,
        start: datetime,
        end: datetime,
        duration: timedelta,
        step: timedelta,
    ) -> tuple[Resource, list[Span]]:
        _check_window(start, end)
        resource = await self._resource(resource_id)
        rules = self._rules(resource, duration, step)
        lower, upper = rules.window(start, end)
        if lower >= upper:
            return resource, []
        busy, own = await self._busy(actor, resource, rules, lower, upper)
        return resource, slots(resource_hours(resource), busy, rules, lower, upper, own)

    async def next(
        self, actor: User, resource_id: uuid.UUID, *, after: datetime, duration: timedelta, step: timedelta
    ) -> tuple[Resource, Span | None]:
        """The earliest open slot within the resource's booking window: read a month of busy time at a
        time, and let next_slot jump through it; the first month with a fit ends the search."""
        resource = await self._resource(resource_id)
        rules = self._rules(resource, duration, step)
        lower, horizon = rules.window(after, rules.latest_start or after)
        hours = resource_hours(resource)
        while lower < horizon:
            upper = min(lower + MAX_WINDOW, horizon)
            busy, own = await self._busy(actor, resource, rules, lower, upper)
            found = next_slot(hours, busy, rules, lower, upper, own)
            if found is not None:
                return resource, found
            lower = upper
        return resource, None

    # --- free/busy --------------------------------------------------------------------------------

    async def freebusy(
        self,
        actor: User,
        *,
        resource_ids: Sequence[uuid.UUID],
        user_ids: Sequence[uuid.UUID],
        start: datetime,
        end: datetime,
    ) -> tuple[dict[uuid.UUID, list[Span]], dict[uuid.UUID, list[Span]]]:
        """Busy time per id, merged, no titles: for a resource, when no seat is free (buffers included)
        or it is closed; for a user, their active bookings and the time outside their own hours."""
        _check_window(start, end)
        if not resource_ids and not user_ids:
            raise _invalid("resourceIds", "give resourceIds, userIds or both")
        if len(resource_ids) + len(user_ids) > MAX_IDS:
            raise _invalid("resourceIds", f"at most {MAX_IDS} ids in all")
        resources: dict[uuid.UUID, list[Span]] = {}
        users: dict[uuid.UUID, list[Span]] = {}
        async with self.deps.db.connect() as conn:
            for resource_id in dict.fromkeys(resource_ids):
                resource = await resource_store.get_resource(conn, resource_id)
                if resource is None:
                    raise NotFound(f"no resource with id {resource_id}")
                full = await store.resource_full(
                    conn, resource_seq=resource.seq, capacity=resource.capacity, start=start, end=end
                )
                closed = _closed(resource_hours(resource), start, end)
                resources[resource_id] = _clip(merge([*full, *closed]), start, end)
            wanted = list(dict.fromkeys(user_ids))
            found = {u.id: u for u in await get_users_by_ids(conn, wanted)} if wanted else {}
            missing = [u for u in wanted if u not in found]
            if missing:
                raise NotFound(f"no user with id {missing[0]}")
            availability = await store.availabilities(conn, wanted) if wanted else {}
            for user_id in wanted:
                booked = await store.user_busy(conn, user_seq=found[user_id].seq, start=start, end=end)
                a = availability[user_id]
                closed = _closed(hours_of(ZoneInfo(a.time_zone), a.weekly), start, end)
                users[user_id] = _clip(merge([*booked, *closed]), start, end)
        return resources, users


def _closed(hours: Hours, start: datetime, end: datetime) -> list[Span]:
    """The complement of the open stretches within [start, end)."""
    gaps: list[Span] = []
    at = start
    for s, e in hours.open_spans(start, end):
        if s > at:
            gaps.append((at, s))
        at = max(at, e)
    if at < end:
        gaps.append((at, end))
    return gaps


def _clip(spans: list[Span], start: datetime, end: datetime) -> list[Span]:
    return [(max(s, start), min(e, end)) for s, e in spans if s < end and e > start]


def parse_ids(raw: str | None, field: str) -> list[uuid.UUID]:
    """A comma-separated list of UUIDs from a query string; 400 naming the first bad one."""
    if not raw:
        return []
    ids = []
    for part in raw.split(","):
        try:
            ids.append(uuid.UUID(part.strip()))
        except ValueError:
            raise _invalid(field, f"{part.strip()[:40]!r} is not a UUID") from None
    return ids


def slot_rules_view(resource: Resource, duration: timedelta, step: timedelta) -> Mapping[str, Any]:
    return {
        "resourceId": str(resource.id),
        "timeZone": resource.time_zone,
        "durationMinutes": int(duration.total_seconds() // 60),
        "stepMinutes": int(step.total_seconds() // 60),
    }
