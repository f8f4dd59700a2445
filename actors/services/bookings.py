"""Bookings: the service REST and WebSocket share. Mutations are messages to the owner's actor
(actors/bookings.py); reads go straight to storage.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from actors.base import Registry
from actors.domain.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    ValidationFailed,
)
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
from actors.ports import Deps
from storage import audit as audit_store
from storage import bookings as store
from storage.bookings import Booking, ListFilter
from storage.users import User


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
            entries, total = await audit_store.audit_entries(
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
