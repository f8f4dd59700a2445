"""/api/webhooks: outbound webhook endpoints, their delivery log, redelivery and test events
(docs/WEBHOOKS.md). Thin handlers over WebhookService."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema, request_schema
from marshmallow import Schema, fields, validate

from actors.domain import webhooks as rules
from actors.services.webhooks import delivery_view, endpoint_view
from handlers.common import json_response, page_meta, require_user
from handlers.docparts import (
    AUTH_ERRORS,
)
from handlers.schemas import PageMeta, PageQuery, Problem, Strict
from handlers.users import path_uuid
from handlers.validation import body, query
from server.web.keys import WEBHOOKS

routes = web.RouteTableDef()

_EVENT_NAMES = [*rules.EVENTS, rules.ALL_EVENTS]
_EVENTS_DOC = (
    "Events to receive: " + ", ".join(f"`{e}`" for e in rules.EVENTS) + "; or `*` alone for all of them"
)


def _url_field(required: bool) -> fields.String:
    return fields.String(
        required=required,
        validate=validate.Length(min=1, max=rules.MAX_URL_LENGTH),
        metadata={
            "description": "Where to POST; production: https, public addresses only",
            "example": "https://example.com/hooks/booking",
        },
    )


def _events_field(required: bool) -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf(_EVENT_NAMES)),
        required=required,
        validate=validate.Length(min=1, max=len(_EVENT_NAMES)),
        metadata={"description": _EVENTS_DOC},
    )


class CreateWebhookRequest(Strict):
    url = _url_field(True)
    events = _events_field(True)
    description = fields.String(allow_none=True, validate=validate.Length(max=500))
    active = fields.Boolean(load_default=True, metadata={"description": "Deliver to it (default true)"})
    all_bookings = fields.Boolean(
        load_default=False,
        data_key="allBookings",
        metadata={"description": "Admins only: every user's bookings, not just your own"},
    )


class UpdateWebhookRequest(Strict):
    url = _url_field(False)
    events = _events_field(False)
    description = fields.String(allow_none=True, validate=validate.Length(max=500))
    active = fields.Boolean(metadata={"description": "true re-enables a disabled endpoint"})


class WebhookOut(Schema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True, data_key="userId")
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    description = fields.String(allow_none=True, required=True)
    active = fields.Boolean(required=True)
    all_bookings = fields.Boolean(required=True, data_key="allBookings")
    disabled_reason = fields.String(allow_none=True, required=True, data_key="disabledReason")
    failing_since = fields.DateTime(allow_none=True, required=True, data_key="failingSince")
    previous_secret_expires_at = fields.DateTime(
        allow_none=True,
        required=True,
        data_key="previousSecretExpiresAt",
        metadata={"description": "Until then the previous secret signs too (after a rotation)"},
    )
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class WebhookWithSecret(WebhookOut):
    secret = fields.String(
        required=True, metadata={"description": "`whsec_…`: shown only here and on rotation; store it"}
    )


class WebhookPage(Schema):
    data = fields.List(fields.Nested(WebhookOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


class AttemptOut(Schema):
    attempt = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    outcome = fields.String(
        required=True, validate=validate.OneOf(["delivered", "failed", "gone", "refused"])
    )
    response_code = fields.Integer(allow_none=True, required=True, data_key="responseCode")
    latency_ms = fields.Float(required=True, data_key="latencyMs")
    response_body = fields.String(
        allow_none=True, required=True, data_key="responseBody", metadata={"description": "First 1 KiB"}
    )
    error = fields.String(allow_none=True, required=True)


class DeliveryOut(Schema):
    id = fields.UUID(required=True)
    webhook_id = fields.String(
        required=True, data_key="webhookId", metadata={"description": "The `webhook-id` header sent"}
    )
    event_type = fields.String(required=True, data_key="eventType")
    booking_id = fields.UUID(allow_none=True, required=True, data_key="bookingId")
    state = fields.String(required=True, validate=validate.OneOf(["pending", "delivered", "failed"]))
    attempt_count = fields.Integer(required=True, data_key="attemptCount")
    created_at = fields.DateTime(required=True, data_key="createdAt")
    next_attempt_at = fields.DateTime(allow_none=True, required=True, data_key="nextAttemptAt")
    delivered_at = fields.DateTime(allow_none=True, required=True, data_key="deliveredAt")
    last_status = fields.Integer(allow_none=True, required=True, data_key="lastStatus")
    attempts = fields.List(fields.Nested(AttemptOut), required=True)


class DeliveryPage(Schema):
    data = fields.List(fields.Nested(DeliveryOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


_create = CreateWebhookRequest()
_update = UpdateWebhookRequest()
_page = PageQuery()

_OWNED: dict[int, dict[str, Any]] = {
    404: {"schema": Problem, "description": "Missing, or someone else's"},
    **AUTH_ERRORS,
}
_BODY_ERRORS: dict[int, dict[str, Any]] = {
    400: {"schema": Problem, "description": "Invalid input (an unknown event, a refused URL, ...)"},
    413: {"schema": Problem, "description": "Body too large"},
    415: {"schema": Problem, "description": "Body is not JSON"},
}
_ID = {"in": "path", "name": "id", "required": True, "schema": {"type": "string", "format": "uuid"}}
_DELIVERY_ID = {
    "in": "path",
    "name": "deliveryId",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


@routes.post("/api/webhooks")
@docs(
    tags=["webhooks"],
    summary="Add a webhook endpoint (its secret is in this answer only)",
    security=_SECURITY,
    responses={
        201: {"schema": WebhookWithSecret, "description": "Created, with its signing secret"},
        **_BODY_ERRORS,
        403: {"schema": Problem, "description": "`allBookings` without the admin role"},
        **AUTH_ERRORS,
    },
)
@request_schema(CreateWebhookRequest)
async def create_webhook(request: web.Request) -> web.Response:
    user = await require_user(request)
    data = await body(request, _create)
    created = await request.app[WEBHOOKS].create(user, data)
    view = {**endpoint_view(created.endpoint), "secret": created.secret}
    return json_response(view, status=201, headers={"Location": f"/api/webhooks/{view['id']}"})


@routes.get("/api/webhooks")
@docs(
    tags=["webhooks"],
    summary="Your webhook endpoints",
    security=_SECURITY,
    responses={
        200: {"schema": WebhookPage, "description": "A page of endpoints, oldest first"},
        400: {"schema": Problem, "description": "Invalid query"},
        **AUTH_ERRORS,
    },
)
@querystring_schema(PageQuery)
async def list_webhooks(request: web.Request) -> web.Response:
    user = await require_user(request)
    q = query(request, _page)
    found, total = await request.app[WEBHOOKS].list_page(user, page=q["page"], limit=q["limit"])
    meta = page_meta(total=total, page=q["page"], limit=q["limit"])
    return json_response({"data": [endpoint_view(e) for e in found], "meta": meta})


@routes.get("/api/webhooks/{id}")
@docs(
    tags=["webhooks"],
    summary="One webhook endpoint (never its secret)",
    security=_SECURITY,
    parameters=[_ID],
    responses={200: {"schema": WebhookOut, "description": "The endpoint"}, **_OWNED},
)
async def get_webhook(request: web.Request) -> web.Response:
    user = await require_user(request)
    return json_response(endpoint_view(await request.app[WEBHOOKS].get(user, path_uuid(request))))


@routes.patch("/api/webhooks/{id}")
@docs(
    tags=["webhooks"],
    summary="Change an endpoint's URL, events, description or active flag",
    security=_SECURITY,
    parameters=[_ID],
    responses={200: {"schema": WebhookOut, "description": "The endpoint"}, **_BODY_ERRORS, **_OWNED},
)
@request_schema(UpdateWebhookRequest)
async def patch_webhook(request: web.Request) -> web.Response:
    user = await require_user(request)
    endpoint_id = path_uuid(request)
    changes = await body(request, _update)
    return json_response(endpoint_view(await request.app[WEBHOOKS].update(user, endpoint_id, changes)))


@routes.delete("/api/webhooks/{id}")
@docs(
    tags=["webhooks"],
    summary="Remove an endpoint, its undelivered messages and its delivery log",
    security=_SECURITY,
    parameters=[_ID],
    responses={
        204: {"description": "Deleted"},
        409: {"schema": Problem, "description": "Contended by a delivery in flight; retry"},
        **_OWNED,
    },
)
async def delete_webhook(request: web.Request) -> web.Response:
    user = await require_user(request)
    await request.app[WEBHOOKS].delete(user, path_uuid(request))
    return web.Response(status=204)


@routes.post("/api/webhooks/{id}/rotate-secret")
@docs(
    tags=["webhooks"],
    summary="A new signing secret; the previous one keeps signing too for 24 h",
    security=_SECURITY,
    parameters=[_ID],
    responses={
        200: {"schema": WebhookWithSecret, "description": "The endpoint with its new secret"},
        **_OWNED,
    },
)
async def rotate_secret(request: web.Request) -> web.Response:
    user = await require_user(request)
    rotated = await request.app[WEBHOOKS].rotate_secret(user, path_uuid(request))
    return json_response({**endpoint_view(rotated.endpoint), "secret": rotated.secret})


@routes.get("/api/webhooks/{id}/deliveries")
@docs(
    tags=["webhooks"],
    summary="The endpoint's messages, newest first, each with its attempts",
    security=_SECURITY,
    parameters=[_ID],
    responses={
        200: {"schema": DeliveryPage, "description": "A page of deliveries"},
        400: {"schema": Problem, "description": "Invalid query"},
        **_OWNED,
    },
)
@querystring_schema(PageQuery)
async def deliveries(request: web.Request) -> web.Response:
    user = await require_user(request)
    endpoint_id = path_uuid(request)
    q = query(request, _page)
    found, total = await request.app[WEBHOOKS].deliveries(user, endpoint_id, page=q["page"], limit=q["limit"])
    meta = page_meta(total=total, page=q["page"], limit=q["limit"])
    return json_response({"data": [delivery_view(m, a) for m, a in found], "meta": meta})


@routes.post("/api/webhooks/{id}/deliveries/{deliveryId}/redeliver")
@docs(
    tags=["webhooks"],
    summary="Send a message again (same webhook-id), now",
    security=_SECURITY,
    parameters=[_ID, _DELIVERY_ID],
    responses={202: {"schema": DeliveryOut, "description": "Queued for delivery"}, **_OWNED},
)
async def redeliver(request: web.Request) -> web.Response:
    user = await require_user(request)
    message = await request.app[WEBHOOKS].redeliver(
        user, path_uuid(request), path_uuid(request, "deliveryId")
    )
    return json_response(delivery_view(message), status=202)


@routes.post("/api/webhooks/{id}/test")
@docs(
    tags=["webhooks"],
    summary="Send a `webhook.test` event to the endpoint",
    security=_SECURITY,
    parameters=[_ID],
    responses={202: {"schema": DeliveryOut, "description": "Queued for delivery"}, **_OWNED},
)
async def send_test(request: web.Request) -> web.Response:
    user = await require_user(request)
    message = await request.app[WEBHOOKS].send_test(user, path_uuid(request))
    return json_response(delivery_view(message), status=202)
