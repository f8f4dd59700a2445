"""WebSocket client helpers shared by the in-process and the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType

TIMEOUT = 5.0
Frame = dict[str, Any]


async def next_frame(ws: ClientWebSocketResponse, *, within: float | None = TIMEOUT) -> Frame:
    """The next JSON frame; fails (rather than hangs) when the socket closes or stays silent for `within`
    seconds (TimeoutError). `within=None` leaves the limit to the caller's own `asyncio.timeout`."""
    async with asyncio.timeout(within):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} (close code {ws.close_code})"
    frame: Frame = json.loads(msg.data)
    return frame


async def ask(
    ws: ClientWebSocketResponse,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    id: str | int = "r1",
) -> Frame:
    """Send a command and return the frame that echoes its id, skipping pushed events in between (each
    frame within TIMEOUT seconds)."""
    frame: Frame = {"event": event, "id": id}
    if data is not None:
        frame["data"] = data
    await ws.send_json(frame)
    while True:
        got = await next_frame(ws)
        if got.get("id") == id:
            return got


async def events_until_pong(ws: ClientWebSocketResponse, *, id: str = "sync") -> list[Frame]:
    """Everything the server queued before our ping: pushed events are in the outbox ahead of the pong."""
    await ws.send_json({"event": "ping", "id": id})
    seen: list[Frame] = []
    while True:
        frame = await next_frame(ws)
        if frame.get("event") == "pong" and frame.get("id") == id:
            return seen
        seen.append(frame)


async def close_code(ws: ClientWebSocketResponse, *, within: float = TIMEOUT) -> int | None:
    """Read until the server's close frame (discarding anything before it), within `within` seconds in
    all; the close code."""
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return ws.close_code


def booking_data(
    hours: float = 24, length: float = 1, title: str = "Standup", **extra: Any
) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)
    end = start + timedelta(hours=length)
    return {
        "title": title,
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": end.isoformat().replace("+00:00", "Z"),
        **extra,
    }
