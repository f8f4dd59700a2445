"""/ws/: the native WebSocket endpoint (SPEC §6).

One socket is one `Connection`: it authenticates (handshake token or a first `authenticate` frame),
subscribes to its user's room in the process's event hub (actors/hub.py; no actor is involved), then
runs a reader and a writer in one TaskGroup. Everything the socket sends — replies and pushed events —
goes through one bounded outbox drained by the writer, so frames never interleave and a client that
stops reading is closed (1013) instead of buffered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakSet

from aiohttp import WSMsgType, web
from aiohttp_apigami import docs

from actors.domain.errors import Unauthorized, Unavailable
from actors.domain.events import Event
from actors.services.bookings import BookingService
from actors.services.resources import ResourceService
from handlers.common import bearer_token, count_api_call, user_json
from handlers.ws_commands import COMMANDS
from handlers.ws_protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    BadFrame,
    TokenBucket,
    domain_error,
    error,
    parse_frame,
    peek_id,
    reply,
)
from server.base.json import dumps
from server.base.settings import Settings
from server.web.keys import (
    AUTH,
    BOOKINGS,
    HUB,
    METRICS,
    RESOURCES,
    SETTINGS,
    WEBSOCKETS,
)
from server.web.logs import user_id_var
from server.web.problems import as_domain_error, is_dependency_failure
from storage.users import User

log = logging.getLogger(__name__)

PATH = "/ws/"
# How long a closing handshake may take before the transport is dropped: a client that does not read
# cannot receive our close frame, and must not hold its buffers forever.
CLOSE_GRACE = 5.0


class Connection:
    """One authenticated socket: its rooms, its outbox, its pacing, and why it closed."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse, settings: Settings) -> None:
        self._app = app
        self._ws = ws
        self._settings = settings
        self._user: User | None = None
        self._rooms: dict[uuid.UUID, Callable[[], None]] = {}
        self._resource_rooms: dict[uuid.UUID, Callable[[], None]] = {}
        self._unsubscribe_broadcasts: Callable[[], None] | None = None
        # Frames to send: replies (dicts) and events, already encoded once for every socket (Event).
        self._outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue(settings.ws_outbox_size)
        self._bucket = TokenBucket(settings.ws_rate_per_second, settings.ws_rate_burst)
        self._strikes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.close_code: int | None = None
        self.close_reason = ""

    # --- what commands see (handlers.ws_commands.Session) ----------------------------------------

    @property
    def user(self) -> User:
        if self._user is None:  # pragma: no cover  (commands run only after authentication)
            raise Unauthorized("not authenticated")
        return self._user

    @property
    def bookings(self) -> BookingService:
        return self._app[BOOKINGS]

    @property
    def rooms(self) -> frozenset[uuid.UUID]:
        return frozenset(self._rooms)

    def join(self, user_id: uuid.UUID) -> None:
        if user_id not in self._rooms:
            self._rooms[user_id] = self._app[HUB].subscribe_user(user_id, self.deliver)

    def leave(self, user_id: uuid.UUID) -> None:
        unsubscribe = self._rooms.pop(user_id, None)
        if unsubscribe is not None:
            unsubscribe()

    @property
    def resources(self) -> ResourceService:
        return self._app[RESOURCES]

    @property
    def resource_rooms(self) -> frozenset[uuid.UUID]:
        return frozenset(self._resource_rooms)

    def join_resource(self, resource_id: uuid.UUID) -> None:
        if resource_id not in self._resource_rooms:
            self._resource_rooms[resource_id] = self._app[HUB].subscribe_resource(resource_id, self.deliver)

    def leave_resource(self, resource_id: uuid.UUID) -> None:
        unsubscribe = self._resource_rooms.pop(resource_id, None)
        if unsubscribe is not None:
            unsubscribe()

    def leave_all(self) -> None:
        """Leave every room and stop receiving broadcasts (the session is over)."""
        for user_id in list(self._rooms):
            self.leave(user_id)
        for resource_id in list(self._resource_rooms):
            self.leave_resource(resource_id)
        if self._unsubscribe_broadcasts is not None:
            self._unsubscribe_broadcasts()
            self._unsubscribe_broadcasts = None

    # --- outbox ------------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Subscriber callback, called synchronously by a fan-out: never blocks, never grows."""
        self.send(event.encoded(dumps))

    def send(self, frame: dict[str, Any] | str) -> None:
        if self._stopping:
            return
        try:
            self._outbox.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("websocket outbox full; closing a slow consumer")
            self.stop(CLOSE_TRY_AGAIN_LATER, "slow consumer: outbox full")

    def stop(self, code: int | None = None, reason: str = "", *, flush: bool = False) -> None:
        """End the session; `code` is ours to send (None: the peer went away or closed first).

        With `flush`, the writer first sends what is already queued (the replies explaining a policy
        close), within CLOSE_GRACE; otherwise queued frames are dropped.
        """
        if not self._stopping:
            self._stopping = True
            self.close_code, self.close_reason = code, reason
        if not self._tasks:
            return
        reader, writer = self._tasks
        reader.cancel()
        if flush and not self._outbox.empty():
            asyncio.get_running_loop().call_later(CLOSE_GRACE, writer.cancel)
        else:
            writer.cancel()

    # --- the session -------------------------------------------------------------------------------

    async def run(self, token: str | None) -> None:
        frame_id: str | int | None = None
        by_frame = token is None
        if token is None:
            token, frame_id = await self._first_frame_token()
            if token is None:
                return
        user = await self._authenticate(token)
        if user is None:
            return
        self._user = user
        user_id_var.set(str(user.id))  # this task's context; the reader and writer copy it
        try:
            self.join(user.id)
            # Broadcasts reach every open socket, whatever rooms it joins or leaves later.
            self._unsubscribe_broadcasts = self._app[HUB].subscribe_all(self.deliver)
        except Unavailable:  # the hub already refuses subscribers: the process is shutting down
            self.stop(CLOSE_GOING_AWAY, "server shutting down")
            return
        if by_frame:
            self.send(reply("authenticate", {"user": user_json(user)}, frame_id))
        if self._stopping:
            return
        async with asyncio.TaskGroup() as tasks:
            self._tasks = [
                tasks.create_task(self._read(), name=f"ws:read:{user.id}"),
                tasks.create_task(self._write(), name=f"ws:write:{user.id}"),
            ]

    async def _first_frame_token(self) -> tuple[str | None, str | int | None]:
        """The token of a first `authenticate` frame; anything else, or silence, closes with 4401."""
        try:
            msg = await self._ws.receive(timeout=self._settings.ws_auth_timeout)
        except TimeoutError:
            self.stop(CLOSE_UNAUTHORIZED, "authentication timeout")
            return None, None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            # The peer left, or aiohttp already closed (1009 for an oversized frame).
            self.stop()
            return None, None
        token: object = None
        frame_id: str | int | None = None
        if msg.type is WSMsgType.TEXT:
            try:
                frame = parse_frame(msg.data)
            except BadFrame:
                pass
            else:
                frame_id = frame.id
                if frame.event == "authenticate":
                    token = frame.data.get("token")
        if not isinstance(token, str) or not token:
            self.stop(CLOSE_UNAUTHORIZED, "authenticate first: {event: authenticate, data: {token}}")
            return None, None
        return token, frame_id

    async def _authenticate(self, token: str) -> User | None:
        try:
            return await self._app[AUTH].authenticate(token)
        except Unauthorized as exc:
            self.stop(CLOSE_UNAUTHORIZED, exc.detail)
        except Exception as exc:
            if not is_dependency_failure(exc):
                log.exception("websocket authentication failed")
            self.stop(CLOSE_TRY_AGAIN_LATER, "authentication is unavailable; retry shortly")
        return None

    async def _read(self) -> None:
        async for msg in self._ws:  # ends at the peer's close frame or ours
            if msg.type is WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                if self._admit(None):
                    self.send(error(415, "binary frames are not supported; send JSON text frames", None))
            elif msg.type is WSMsgType.ERROR:  # aiohttp has already closed, e.g. 1009 for a huge frame
                break
        self.stop()  # the writer has nobody left to write to

    def _admit(self, text: str | None) -> bool:
        """Pace the client; a 429 per refused frame, and a close (1008) when it does not slow down."""
        if self._bucket.take():
            self._strikes = 0
            return True
        self._strikes += 1
        if self._strikes > self._settings.ws_rate_strikes:
            log.info("websocket closed for flooding after %d refused frames", self._strikes - 1)
            self.stop(CLOSE_POLICY_VIOLATION, "rate limit exceeded", flush=True)
        else:
            retry_after = max(1, math.ceil(self._bucket.retry_after()))
            frame_id = peek_id(text) if text is not None else None
            self.send(error(429, "too many frames; slow down", frame_id, retryAfter=retry_after))
        return False

    async def _on_text(self, text: str) -> None:
        if not self._admit(text):
            return
        try:
            frame = parse_frame(text)
        except BadFrame as exc:
            self.send(domain_error(exc, exc.frame_id))
            return
        command = COMMANDS.get(frame.event)
        if command is None:
            self.send(error(400, f"unknown event {frame.event!r}", frame.id, events=sorted(COMMANDS)))
            return
        try:
            if command.metered:
                await self._count_api_call()
            result = await command.run(self, frame.data)
        except Exception as exc:  # like REST (server/web/problems.py): a dependency down is 503, else a 500
            domain = as_domain_error(exc)
            if domain is None:
                log.exception("websocket command %s failed", frame.event)
                self.send(error(500, "unexpected error", frame.id))
            else:
                if domain is not exc:
                    log.warning("dependency unavailable during %s: %s", frame.event, type(exc).__name__)
                self.send(domain_error(domain, frame.id))
        else:
            self.send(reply(command.reply_event, result, frame.id))

    async def _count_api_call(self) -> None:
        """The per-user API limit REST applies (across sockets and processes): more sockets must not
        mean more database work."""
        await count_api_call(self._app, self.user)

    async def _write(self) -> None:
        while not (self._stopping and self._outbox.empty()):  # a flushing stop ends when drained
            frame = await self._outbox.get()
            try:
                await self._ws.send_str(frame if isinstance(frame, str) else dumps(frame))
            except ConnectionError:  # the peer is gone; the reader sees it too
                self.stop()
                return

    async def close(self, request: web.Request) -> None:
        """Send our close code, if any; drop the transport when the handshake cannot finish in time."""
        code = self.close_code if self.close_code is not None else 1000
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self._ws.close(code=code, message=self.close_reason.encode()[:120])
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """No Origin: not a browser, nothing to protect. Otherwise the allow-list, or the same host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    # A page served by this very host (Swagger UI, a bundled front end) may connect.
    return urlsplit(origin).netloc.lower() == request.host.lower()


@docs(
    tags=["websocket"],
    summary="Native WebSocket: live booking events and commands (protocol in docs/WEBSOCKET.md)",
    parameters=[
        {
            "in": "query",
            "name": "token",
            "required": False,
            "schema": {"type": "string"},
            "description": "Access token; or `Authorization: Bearer`, or a first `authenticate` frame",
        }
    ],
    responses={
        101: {"description": "Switching protocols"},
        400: {"description": "Not a WebSocket upgrade request"},
        403: {"description": "`Origin` not in the allow-list"},
    },
)
async def websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    if not origin_allowed(request, settings.ws_allowed_origins):
        raise web.HTTPForbidden(text="this Origin may not open a WebSocket here")
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_seconds,
        max_msg_size=settings.ws_max_frame_bytes,
        timeout=CLOSE_GRACE,
        # permessage-deflate costs a zlib context per socket (memory) and cannot be cancelled mid-frame.
        compress=False,
    )
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    gauge = request.app[METRICS].websockets
    gauge.inc()
    connection = Connection(request.app, ws, settings)
    # A header token wins over a query token; a query string ends up in proxy logs, so prefer the header.
    token = bearer_token(request) or request.query.get("token") or None
    try:
        await connection.run(token)
    except Exception:
        log.exception("websocket session failed")
        connection.stop(CLOSE_INTERNAL_ERROR, "internal error")
    finally:
        connection.leave_all()
        gauge.dec()
        await connection.close(request)
    return ws


async def close_all(app: web.Application) -> None:
    """on_shutdown: say goodbye (1001) to every socket before handlers are awaited and cleanup runs."""
    registered: WeakSet[web.WebSocketResponse] = app[WEBSOCKETS]
    sockets = list(registered)  # a snapshot: the weak set may change while we await
    if not sockets:
        return
    closing = (ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown") for ws in sockets)
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await asyncio.gather(*closing, return_exceptions=True)
    except TimeoutError:
        log.warning("some websockets did not finish closing within %.0fs", CLOSE_GRACE)


def setup(app: web.Application) -> None:
    app[WEBSOCKETS] = WeakSet()
    app.router.add_get(PATH, websocket)
    app.on_shutdown.append(close_all)
