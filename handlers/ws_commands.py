"""What each client event does: a dispatch table from event name to a thin command over the services.

Bookings go through the same `BookingService` and the same marshmallow schemas as REST (through
`validate`, the one validation path), so a frame gets the status REST would give the same input. Fields
that REST carries in the path or in headers (`id`, `If-Match`, `Idempotency-Key`) travel in `data` here
as `id`, `ifMatch` and `idempotencyKey`, and are split off before the body schema sees the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from marshmallow import fields
from marshmallow import validate as rules

from actors.domain.errors import Conflict, Forbidden
from actors.domain.messages import SeriesWritten
from actors.domain.views import booking_view, iso
from actors.services.bookings import BookingService
from actors.services.resources import ResourceService
from handlers.booking_schemas import BookingListQuery, CreateBookingRequest, UpdateBookingRequest
from handlers.common import page_meta
from handlers.preconditions import IDEMPOTENCY_KEY
from handlers.schemas import Strict
from handlers.validation import validate
from storage.users import User

MAX_ROOMS = 100  # bounds the subscriptions (and actors) one admin connection can pin


class Session(Protocol):
    """The connection as commands see it (implemented by handlers.ws.Connection)."""

    @property
    def user(self) -> User: ...

    @property
    def bookings(self) -> BookingService: ...

    @property
    def rooms(self) -> frozenset[uuid.UUID]: ...

    def join(self, user_id: uuid.UUID) -> None: ...

    def leave(self, user_id: uuid.UUID) -> None: ...

    @property
    def resources(self) -> ResourceService: ...

    @property
    def resource_rooms(self) -> frozenset[uuid.UUID]: ...

    def join_resource(self, resource_id: uuid.UUID) -> None: ...

    def leave_resource(self, resource_id: uuid.UUID) -> None: ...


Run = Callable[[Session, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Command:
    run: Run
    reply_event: str
    # Counted against the per-user API limit, like the REST call it mirrors; socket housekeeping is not.
    metered: bool = True


# --- WebSocket-only envelopes (the booking fields themselves use the REST schemas) -------------------


class RoomRequest(Strict):
    user_id = fields.UUID(required=True, data_key="userId")


class LeaveRoomRequest(Strict):
    user_id = fields.UUID(data_key="userId", metadata={"description": "Your own room when omitted"})


class ResourceRoomRequest(Strict):
    resource_id = fields.UUID(required=True, data_key="resourceId")


class BookingRef(Strict):
    id = fields.UUID(required=True)
    if_match = fields.Integer(strict=True, validate=rules.Range(min=0), data_key="ifMatch")
    scope = fields.String(load_default="this", validate=rules.OneOf(["this", "following", "all"]))


class CreateOptions(Strict):
    # The Idempotency-Key header's rule, so a retried frame replays like a retried POST.
    idempotency_key = fields.String(validate=rules.Regexp(IDEMPOTENCY_KEY), data_key="idempotencyKey")


_room = RoomRequest()
_leave = LeaveRoomRequest()
_ref = BookingRef()
_resource_room = ResourceRoomRequest()
_options = CreateOptions()
_create = CreateBookingRequest()
_update = UpdateBookingRequest()
_list = BookingListQuery()


def _split(data: dict[str, Any], names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    picked = {k: v for k, v in data.items() if k in names}
    rest = {k: v for k, v in data.items() if k not in names}
    return picked, rest


# --- commands ------------------------------------------------------------------------------------


async def ping(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    return {"time": iso(datetime.now(UTC))}


async def authenticate_again(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    raise Conflict("this connection is already authenticated; open a new one to change user")


async def join_user_room(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    target: uuid.UUID = validate(_room, data)["user_id"]
    if target != session.user.id and not session.user.is_admin:
        raise Forbidden("you may only join your own room")
    if target not in session.rooms and len(session.rooms) >= MAX_ROOMS:
        raise Conflict(f"a connection may be in at most {MAX_ROOMS} rooms; leave one first")
    session.join(target)
    return {"userId": str(target), "rooms": sorted(str(r) for r in session.rooms)}


async def leave_user_room(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    target: uuid.UUID = validate(_leave, data).get("user_id", session.user.id)
    session.leave(target)
    return {"userId": str(target), "rooms": sorted(str(r) for r in session.rooms)}


def _resource_rooms(session: Session) -> dict[str, Any]:
    return {"resourceRooms": sorted(str(r) for r in session.resource_rooms)}


async def join_resource_room(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """Watch a resource's busy time (`resource.busy.changed`, no private details): any active user."""
    target: uuid.UUID = validate(_resource_room, data)["resource_id"]
    await session.resources.get(session.user, target)  # 404 for an unknown resource
    if target not in session.resource_rooms and len(session.resource_rooms) >= MAX_ROOMS:
        raise Conflict(f"a connection may watch at most {MAX_ROOMS} resources; leave one first")
    session.join_resource(target)
    return {"resourceId": str(target), **_resource_rooms(session)}


async def leave_resource_room(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    target: uuid.UUID = validate(_resource_room, data)["resource_id"]
    session.leave_resource(target)
    return {"resourceId": str(target), **_resource_rooms(session)}


async def create_booking(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    options, body = _split(data, ("idempotencyKey",))
    key = validate(_options, options).get("idempotency_key")
    fields_ = validate(_create, body)
    created = await session.bookings.create(session.user, fields_, idempotency_key=key)
    return created.view if isinstance(created, SeriesWritten) else created.booking


async def get_bookings(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    q = validate(_list, data)
    found, total = await session.bookings.list_page(
        session.user,
        page=q["page"],
        limit=q["limit"],
        user_id=q.get("user_id"),
        start_from=q.get("from_"),
        start_to=q.get("to"),
        status=q.get("status"),
    )
    return {
        "data": [booking_view(b) for b in found],
        "meta": page_meta(total=total, page=q["page"], limit=q["limit"]),
    }


async def get_booking(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    ref = validate(_ref, data)
    return booking_view(await session.bookings.get(session.user, ref["id"]))


async def update_booking(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    ref_fields, body = _split(data, ("id", "ifMatch", "scope"))
    ref = validate(_ref, ref_fields)
    changes = validate(_update, body)
    return await session.bookings.update(
        session.user, ref["id"], changes, if_match=ref.get("if_match"), scope=ref["scope"]
    )


async def delete_booking(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    ref = validate(_ref, data)
    await session.bookings.delete(session.user, ref["id"], if_match=ref.get("if_match"), scope=ref["scope"])
    return {"id": str(ref["id"])}


# A reply carries the request's event name and id; `ping` answers `pong` (SPEC §6).
COMMANDS: dict[str, Command] = {
    "ping": Command(ping, "pong", metered=False),
    "authenticate": Command(authenticate_again, "authenticate", metered=False),
    "join-user-room": Command(join_user_room, "join-user-room", metered=False),
    "leave-user-room": Command(leave_user_room, "leave-user-room", metered=False),
    "join-resource-room": Command(join_resource_room, "join-resource-room", metered=False),
    "leave-resource-room": Command(leave_resource_room, "leave-resource-room", metered=False),
    "create-booking": Command(create_booking, "create-booking"),
    "get-bookings": Command(get_bookings, "get-bookings"),
    "get-booking": Command(get_booking, "get-booking"),
    "update-booking": Command(update_booking, "update-booking"),
    "delete-booking": Command(delete_booking, "delete-booking"),
}
