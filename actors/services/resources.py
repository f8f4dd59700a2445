"""Resources: the admin service over them (create, change, retire, list) and their busy time. Their
bookings are written by the resource's actor (actors/resources.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from actors.domain.errors import FieldError, Forbidden, NotFound, ValidationFailed
from actors.domain.resources import MAX_BUSY_WINDOW, busy_view, duplicate, resource_view
from actors.domain.rules import check_version
from actors.domain.zones import check_zone
from actors.ports import Deps
from storage import audit as audit_store
from storage import resource_bookings as resource_booking_store
from storage import resources as store
from storage.errors import DuplicateName
from storage.resources import Resource
from storage.users import User


def _check_zone(values: Mapping[str, Any]) -> None:
    zone = values.get("time_zone")
    if zone is not None:
        check_zone(zone)


class ResourceService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def create(self, actor: User, values: Mapping[str, Any]) -> Resource:
        _require_admin(actor)
        _check_zone(values)
        async with self.deps.db.begin() as conn:
            try:
                resource = await store.create_resource(conn, dict(values))
            except DuplicateName:
                raise duplicate(values["name"]) from None
            await audit_store.audit(
                conn,
                actor_id=actor.id,
                action="create",
                entity="resource",
                entity_id=resource.id,
                before=None,
                after=resource_view(resource),
            )
        return resource

    async def update(
        self, actor: User, resource_id: uuid.UUID, changes: Mapping[str, Any], *, if_match: int | None = None
    ) -> Resource:
        _require_admin(actor)
        if not changes:
            raise ValidationFailed("nothing to change", [FieldError("body", "give at least one field")])
        _check_zone(changes)
        async with self.deps.db.begin() as conn:
            # The row lock every booking writer of this resource takes: a change (capacity, buffers,
            # retirement) is ordered against them, never in the middle of one.
            current = await store.get_resource(conn, resource_id, for_update=True)
            if current is None:
                raise NotFound("resource not found")
            check_version("resource", current.version, if_match)
            values = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if not values:
                return current
            try:
                resource = await store.update_resource(conn, resource_id, values)
            except DuplicateName:
                raise duplicate(values.get("name", current.name)) from None
            await audit_store.audit(
                conn,
                actor_id=actor.id,
                action="update",
                entity="resource",
                entity_id=resource.id,
                before=resource_view(current),
                after=resource_view(resource),
            )
        return resource

    async def retire(self, actor: User, resource_id: uuid.UUID, *, if_match: int | None = None) -> Resource:
        return await self.update(actor, resource_id, {"active": False}, if_match=if_match)

    async def get(self, actor: User, resource_id: uuid.UUID) -> Resource:
        async with self.deps.db.connect() as conn:
            resource = await store.get_resource(conn, resource_id)
        if resource is None:
            raise NotFound("resource not found")
        return resource

    async def list_page(
        self, actor: User, *, page: int, limit: int, include_retired: bool = False
    ) -> tuple[list[Resource], int]:
        if include_retired and not actor.is_admin:
            raise Forbidden("only admins may list retired resources")
        async with self.deps.db.connect() as conn:
            return await store.list_resources(
                conn, include_retired=include_retired, offset=(page - 1) * limit, limit=limit
            )

    async def busy(
        self, actor: User, resource_id: uuid.UUID, *, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        errors = []
        if end <= start:
            errors.append(FieldError("to", "must be after from"))
        elif end - start > MAX_BUSY_WINDOW:
            errors.append(FieldError("to", f"the window may span at most {MAX_BUSY_WINDOW.days} days"))
        if errors:
            raise ValidationFailed("; ".join(f"{e.field} {e.message}" for e in errors), errors)
        async with self.deps.db.connect() as conn:
            resource = await store.get_resource(conn, resource_id)
            if resource is None:
                raise NotFound("resource not found")
            found = await resource_booking_store.busy(conn, resource_seq=resource.seq, start=start, end=end)
        return [busy_view(b, actor) for b in found]


def _require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden("admin role required")
