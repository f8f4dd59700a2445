"""WebSocket client helpers shared by the in-process and the end-to-end tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType

TIMEOUT = 5.0
Frame = dict[str, Any]


async def next_frame(ws: ClientWebSocketResponse, *, timeout: float = TIMEOUT) -> Frame:
    """The next JSON frame; fails (rather than hangs) when the socket closes or stays silent."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} (close code {ws.close_code})"
    frame: Frame = json.loads(msg.data)
    return frame


async def ask(
    ws: ClientWebSocketResponse,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    id: str | int = "r1",
    timeout: float = TIMEOUT,
) -> Frame:
    """Send a command and return the frame that echoes its id, skipping pushed events in between."""
    frame: Frame = {"event": event, "id": id}
    if data is not None:
        frame["data"] = data
    await ws.send_json(frame)
    while True:
        got = await next_frame(ws, timeout=timeout)
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


async def close_code(ws: ClientWebSocketResponse, *, timeout: float = TIMEOUT) -> int | None:
    """Read until the server's close frame (discarding anything before it); the close code."""
    while True:
        msg = await ws.receive(timeout=timeout)
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
