"""Calendar feeds (docs/CALENDAR.md): `/api/calendar/feeds` manages your secret feed URLs (JWT, owner
only); `GET /cal/{token}.ics` serves one, with the token as its only credential."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, request_schema
from marshmallow import Schema, fields, validate

from actors.domain.views import iso
from actors.services import calendar_feeds as rules
from handlers.common import client_ip, json_response, require_user
from handlers.docparts import AUTH_ERRORS, BODY_ERRORS, ID_PARAM
from handlers.schemas import Problem, Strict
from handlers.users import path_uuid
from handlers.validation import body
from server.web.keys import CALENDAR_FEEDS, LIMITER, SETTINGS
from storage.calendar_feeds import CalendarFeed

routes = web.RouteTableDef()

CACHE_CONTROL = "private, max-age=300"
CONTENT_TYPE = "text/calendar"
FEED_PATH = "/cal/{token}.ics"


class CreateFeedRequest(Strict):
    kind = fields.String(
        required=True,
        validate=validate.OneOf(rules.KINDS),
        metadata={"description": "`bookings`: your own bookings; `resource`: a resource's busy time"},
    )
    resource_id = fields.UUID(
        data_key="resourceId", metadata={"description": "The resource, for `kind: resource` only"}
    )
    name = fields.String(
        validate=validate.Length(min=1, max=rules.MAX_NAME_CHARS),
        metadata={"description": "The calendar's name in the app (default: `My bookings` or the resource's)"},
    )


class FeedOut(Schema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(rules.KINDS))
    resource_id = fields.UUID(allow_none=True, required=True, data_key="resourceId")
    name = fields.String(required=True)
    token_prefix = fields.String(
        required=True,
        data_key="tokenPrefix",
        metadata={
            "description": "The public part of the URL's token (`bkcal_<tokenPrefix>_…`), to tell feeds apart"
        },
    )
    created_at = fields.DateTime(required=True, data_key="createdAt")
    rotated_at = fields.DateTime(allow_none=True, required=True, data_key="rotatedAt")
    last_used_at = fields.DateTime(
        allow_none=True,
        required=True,
        data_key="lastUsedAt",
        metadata={"description": "The last fetch, to the minute"},
    )


class FeedWithUrl(FeedOut):
    url = fields.String(
        required=True,
        metadata={
            "description": "The secret subscription URL: shown only here and on rotation; anyone who has "
            "it can read the feed",
            "example": "https://booking.example.com/cal/bkcal_0123456789ab_….ics",
        },
    )
    path = fields.String(required=True, metadata={"description": "The same URL's path"})


class FeedList(Schema):
    data = fields.List(fields.Nested(FeedOut), required=True)


_create = CreateFeedRequest()
_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_OWNED: dict[int, dict[str, Any]] = {
    404: {"schema": Problem, "description": "No live feed of yours has this id"},
    **AUTH_ERRORS,
}


def feed_view(feed: CalendarFeed) -> dict[str, Any]:
    return {
        "id": str(feed.id),
        "kind": feed.kind,
        "resourceId": str(feed.resource_id) if feed.resource_id else None,
        "name": feed.name,
        "tokenPrefix": feed.prefix,
        "createdAt": iso(feed.created_at),
        "rotatedAt": iso(feed.rotated_at) if feed.rotated_at else None,
        "lastUsedAt": iso(feed.last_used_at) if feed.last_used_at else None,
    }


def _origin(request: web.Request) -> str:
    """scheme://host the client used: behind a trusted proxy, the X-Forwarded-Proto/-Host it set."""
    scheme, host = request.scheme, request.host
    if request.app[SETTINGS].trust_proxy:
        scheme = request.headers.get("X-Forwarded-Proto", "").rpartition(",")[2].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", "").rpartition(",")[2].strip() or host
    return f"{scheme}://{host}"


def _with_url(request: web.Request, new: rules.NewToken) -> dict[str, Any]:
    return {**feed_view(new.feed), "url": _origin(request) + new.path, "path": new.path}


@routes.get("/api/calendar/feeds")
@docs(
    tags=["calendar"],
    summary="Your live calendar feeds (never their URLs)",
    security=_SECURITY,
    responses={200: {"schema": FeedList, "description": "Oldest first"}, **AUTH_ERRORS},
)
async def list_feeds(request: web.Request) -> web.Response:
    user = await require_user(request)
    feeds = await request.app[CALENDAR_FEEDS].list_feeds(user)
    return json_response({"data": [feed_view(f) for f in feeds]})


@routes.post("/api/calendar/feeds")
@docs(
    tags=["calendar"],
    summary="A new secret iCalendar feed URL (shown in this answer only)",
    description='`{kind: "bookings"}` for your own bookings, `{kind: "resource", resourceId}` for a '
    f"resource's busy time. At most {rules.MAX_LIVE_FEEDS} live feeds per user.",
    security=_SECURITY,
    responses={
        201: {"schema": FeedWithUrl, "description": "Created, with its secret URL"},
        400: {"schema": Problem, "description": "Invalid input"},
        404: {"schema": Problem, "description": "No such resource"},
        409: {
            "schema": Problem,
            "description": f"{rules.MAX_LIVE_FEEDS} live feeds already, or the resource is retired",
        },
        **BODY_ERRORS,
        **AUTH_ERRORS,
    },
)
@request_schema(CreateFeedRequest)
async def create_feed(request: web.Request) -> web.Response:
    user = await require_user(request)
    data = await body(request, _create)
    new = await request.app[CALENDAR_FEEDS].create(
        user, kind=data["kind"], resource_id=data.get("resource_id"), name=data.get("name")
    )
    return json_response(_with_url(request, new), status=201)


@routes.post("/api/calendar/feeds/{id}/rotate")
@docs(
    tags=["calendar"],
    summary="A new secret URL for the feed; the old one answers 404 from now on",
    security=_SECURITY,
    parameters=ID_PARAM,
    responses={200: {"schema": FeedWithUrl, "description": "The feed with its new URL"}, **_OWNED},
)
async def rotate_feed(request: web.Request) -> web.Response:
    user = await require_user(request)
    new = await request.app[CALENDAR_FEEDS].rotate(user, path_uuid(request))
    return json_response(_with_url(request, new))


@routes.delete("/api/calendar/feeds/{id}")
@docs(
    tags=["calendar"],
    summary="Revoke the feed: its URL answers 404 from now on",
    security=_SECURITY,
    parameters=ID_PARAM,
    responses={204: {"description": "Revoked"}, **_OWNED},
)
async def revoke_feed(request: web.Request) -> web.Response:
    user = await require_user(request)
    await request.app[CALENDAR_FEEDS].revoke(user, path_uuid(request))
    return web.Response(status=204)


_FEED_HEADERS = {
    "ETag": {"description": "Strong; send it back in `If-None-Match`", "schema": {"type": "string"}},
    "Cache-Control": {"description": f"`{CACHE_CONTROL}`", "schema": {"type": "string"}},
}


@routes.get(FEED_PATH)
@docs(
    tags=["calendar"],
    summary="The feed, as iCalendar (RFC 5545): subscribe to this URL in a calendar app",
    description="No access token: the URL's token is the credential. An unknown, malformed or revoked "
    "token answers 404, always alike; after `CALENDAR_FEED_MISS_LIMIT_PER_IP` of those in "
    "`CALENDAR_FEED_MISS_WINDOW` seconds, every fetch from that address is 429 until the window ends.",
    security=[],
    parameters=[
        {
            "in": "path",
            "name": "token",
            "required": True,
            "schema": {"type": "string"},
            "description": "`bkcal_<prefix>_<secret>`, from the feed's create or rotate answer",
        },
        {
            "in": "header",
            "name": "If-None-Match",
            "required": False,
            "schema": {"type": "string"},
            "description": "The ETag of a previous fetch: 304 while the feed is unchanged",
        },
    ],
    responses={
        200: {
            "description": "The calendar",
            "content": {"text/calendar": {"schema": {"type": "string"}}},
            "headers": _FEED_HEADERS,
        },
        304: {"description": "Unchanged since the ETag given in If-None-Match", "headers": _FEED_HEADERS},
        404: {"schema": Problem, "description": "No live feed has this URL"},
        429: {"schema": Problem, "description": "Too many unknown feed URLs from this address"},
        503: {"schema": Problem, "description": "PostgreSQL is unavailable; retry after `Retry-After`"},
    },
)
async def serve_feed(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    limiter = request.app[LIMITER]
    address = client_ip(request)
    limit = {"limit": settings.feed_misses_per_ip, "window": settings.feed_miss_window}
    # Only misses count; an address over the limit is refused before any lookup, so guessing cannot go on
    # at any rate (a brute force stays refused while Redis is down: counted per process then).
    await limiter.check("cal-miss", address, **limit, when_down="local")
    found = await request.app[CALENDAR_FEEDS].fetch(
        request.match_info["token"], if_none_match=request.headers.get("If-None-Match")
    )
    if found is None:
        await limiter.hit("cal-miss", address, **limit, when_down="local")
        raise web.HTTPNotFound()  # the router's own 404 for any other path under /cal/, word for word
    headers = {"ETag": found.etag, "Cache-Control": CACHE_CONTROL}
    if found.body is None:
        return web.Response(status=304, headers=headers)
    response = web.Response(body=found.body, headers=headers, content_type=CONTENT_TYPE, charset="utf-8")
    response.headers["Content-Disposition"] = 'inline; filename="calendar.ics"'
    return response
