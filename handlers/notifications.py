"""/api/notifications: the user's delivered reminders and system notices, newest first; and an admin's
broadcast of a `system.notification` to every open socket."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema, ValidationError, fields, validates
from marshmallow import validate as rules
from redis.exceptions import RedisError

from actors.domain.errors import Unavailable
from actors.hub import make_event
from actors.reminders import notification_view
from handlers.common import json_response, page_meta, require_admin, require_user
from handlers.docparts import (
    AUTH_ERRORS,
)
from handlers.schemas import PageMeta, PageQuery, Problem, Strict
from handlers.users import path_uuid
from handlers.validation import body, query
from server.bus.redisgate import RedisDown
from server.web.keys import HUB, NOTIFICATIONS

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

BROADCAST_DATA_BYTES = 4096  # goes to every socket of every process: keep it a notice, not a payload


class NotificationQuery(PageQuery):
    unread = fields.Boolean(metadata={"description": "true: only unread; false: only read; absent: all"})


class NotificationOut(Schema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True, metadata={"description": "booking.reminder or system.notification"})
    title = fields.String(required=True)
    data = fields.Dict(required=True, metadata={"description": "bookingId, startTime, dueAt, minutesBefore"})
    read = fields.Boolean(required=True)
    read_at = fields.DateTime(allow_none=True, data_key="readAt")
    created_at = fields.DateTime(required=True, data_key="createdAt")


class NotificationPage(Schema):
    data = fields.List(fields.Nested(NotificationOut), required=True)
    meta = fields.Nested(PageMeta, required=True)
    unread = fields.Integer(required=True, metadata={"description": "unread notifications in total"})


class BroadcastRequest(Strict):
    message = fields.String(
        required=True,
        # Not blank; a pattern both Python's match and OpenAPI's (ECMA, unanchored) read the same way.
        validate=[rules.Length(min=1, max=1000), rules.Regexp(r"[\s\S]*\S", error="must not be blank")],
        metadata={"description": "Shown to every connected user", "example": "Maintenance at 18:00 UTC"},
    )
    data = fields.Dict(
        keys=fields.String(),
        metadata={
            "description": f"Optional machine-readable details, at most {BROADCAST_DATA_BYTES} bytes as JSON"
        },
    )

    @validates("data")
    def _small_and_plain(self, value: dict[str, Any], **kwargs: Any) -> None:
        try:
            # NaN and Infinity parse (Python's json accepts them) but are not JSON: no client could read them.
            encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            raise ValidationError("numbers must be finite (no NaN or Infinity)") from None
        if len(encoded.encode()) > BROADCAST_DATA_BYTES:
            raise ValidationError(f"at most {BROADCAST_DATA_BYTES} bytes as JSON")


class BroadcastData(Schema):
    message = fields.String(required=True)
    data = fields.Dict(metadata={"description": "As sent, when sent"})


class BroadcastOut(Schema):
    event = fields.String(required=True, metadata={"description": "Always `system.notification`"})
    data = fields.Nested(BroadcastData, required=True)
    timestamp = fields.DateTime(required=True)


_query = NotificationQuery()
_broadcast = BroadcastRequest()


@routes.get("/api/notifications")
@docs(
    tags=["notifications"],
    summary="Your notifications (delivered reminders, system notices), newest first",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": NotificationPage, "description": "A page of notifications"},
        400: {"schema": Problem, "description": "Invalid query"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(NotificationQuery)
async def list_notifications(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _query)
    service = request.app[NOTIFICATIONS]
    found, total = await service.list_page(user.id, unread=q.get("unread"), page=q["page"], limit=q["limit"])
    _, unread = await service.list_page(user.id, unread=True, page=1, limit=1)
    return json_response(
        {
            "data": [notification_view(n) for n in found],
            "meta": page_meta(total=total, page=q["page"], limit=q["limit"]),
            "unread": unread,
        }
    )


@routes.post("/api/notifications/{id}/read")
@docs(
    tags=["notifications"],
    summary="Mark a notification read (idempotent)",
    security=[{"bearerAuth": []}],
    parameters=[
        {"in": "path", "name": "id", "required": True, "schema": {"type": "string", "format": "uuid"}}
    ],
    responses={
        200: {"schema": NotificationOut, "description": "The notification, read"},
        404: {"schema": Problem, "description": "No such notification of yours"},
        **AUTH_ERRORS,
    },
)
async def mark_read(request: web.Request) -> web.Response:
    user = await require_user(request)
    note = await request.app[NOTIFICATIONS].mark_read(user.id, path_uuid(request))
    return json_response(notification_view(note))


@routes.post("/api/notifications/broadcast")
@docs(
    tags=["notifications"],
    summary="Send a system.notification to every open WebSocket on every web process (admin)",
    description="Live only: sockets open now receive `{event: system.notification, data: {message, "
    "data?}, timestamp}`; nothing is stored, and a user who is offline does not see it later. 503 when "
    "Redis is unavailable: then no socket got it, so a retry sends it once.",
    security=[{"bearerAuth": []}],
    responses={
        202: {"schema": BroadcastOut, "description": "Published: the event as the sockets receive it"},
        400: {"schema": Problem, "description": "Invalid body"},
        403: {"schema": Problem, "description": "Admin role required"},
        **AUTH_ERRORS,
    },
)
@request_schema(BroadcastRequest)
async def broadcast(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    fields_ = await body(request, _broadcast)
    payload: dict[str, Any] = {"message": fields_["message"]}
    if "data" in fields_:
        payload["data"] = fields_["data"]
    event = make_event("system.notification", payload)
    try:
        await request.app[HUB].announce(event)
    except (RedisError, OSError, RedisDown) as exc:
        log.warning("broadcast not published (%s)", exc if isinstance(exc, RedisDown) else type(exc).__name__)
        raise Unavailable("Redis is unavailable: the notification was not sent; retry shortly") from None
    log.info("admin %s broadcast a system.notification to every socket", admin.id)
    return json_response(event.wire(), status=202)
