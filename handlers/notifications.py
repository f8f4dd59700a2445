"""/api/notifications: the user's delivered reminders and system notices, newest first."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema
from marshmallow import Schema, fields

from actors.reminders import notification_view
from handlers.common import json_response, page_meta, require_user
from handlers.schemas import PageMeta, PageQuery, Problem
from handlers.users import path_uuid
from handlers.validation import query
from server.keys import NOTIFICATIONS

routes = web.RouteTableDef()


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


_query = NotificationQuery()
_AUTH_ERRORS = {
    401: {"schema": Problem, "description": "Missing or invalid access token"},
    429: {"schema": Problem, "description": "Rate limited"},
}


@routes.get("/api/notifications")
@docs(
    tags=["notifications"],
    summary="Your notifications (delivered reminders, system notices), newest first",
    security=[{"bearerAuth": []}],
    responses={
        200: {"schema": NotificationPage, "description": "A page of notifications"},
        400: {"schema": Problem, "description": "Invalid query"},
        **_AUTH_ERRORS,
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
        **_AUTH_ERRORS,
    },
)
async def mark_read(request: web.Request) -> web.Response:
    user = await require_user(request)
    note = await request.app[NOTIFICATIONS].mark_read(user.id, path_uuid(request))
    return json_response(notification_view(note))
