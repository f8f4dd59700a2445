"""The WebSocket wire format, without I/O: parse a client frame, shape replies and errors, pace a client.

A client frame is a JSON text frame `{"event": str, "data": object, "id"?: str | int}`. Everything that
can go wrong with one is a `BadFrame` (400), which still carries the frame's `id` when it could be read,
so the error reply can echo it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from actors.domain.errors import DomainError, FieldError, ValidationFailed
from handlers.validation import parse_json, unstorable
from server.web.problems import details, kind_of

# Close codes. 4401 mirrors HTTP 401 in the 4000-4999 range RFC 6455 leaves to applications.
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401

MAX_ID_LENGTH = 128
MAX_EVENT_LENGTH = 64

FrameId = str | int


@dataclass(frozen=True, slots=True)
class Frame:
    event: str
    data: dict[str, Any]
    id: FrameId | None = None


class BadFrame(ValidationFailed):
    def __init__(self, detail: str, field: str, frame_id: FrameId | None = None) -> None:
        super().__init__(detail, [FieldError(field, detail)])
        self.frame_id = frame_id


def _frame_id(message: dict[str, Any]) -> FrameId | None:
    """The id to echo, or None; a malformed id is reported without one (it cannot be echoed)."""
    raw = message.get("id")
    if raw is None:
        return None
    # bool is an int subclass; `true` is not an id.
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise BadFrame("id must be a string or an integer", "id")
    if isinstance(raw, str) and len(raw) > MAX_ID_LENGTH:
        raise BadFrame(f"id must be at most {MAX_ID_LENGTH} characters", "id")
    if isinstance(raw, str) and (reason := unstorable(raw)) is not None:
        raise BadFrame(f"id {reason}", "id")  # a lone surrogate cannot be sent back in a text frame
    return raw


def parse_frame(text: str) -> Frame:
    try:
        message = parse_json(text)
    except ValidationFailed as exc:
        reason = exc.errors[0].message
        raise BadFrame(f"frame is not valid JSON: {reason}", "body") from None
    if not isinstance(message, dict):
        raise BadFrame("frame must be a JSON object {event, data, id?}", "body")
    frame_id = _frame_id(message)
    event = message.get("event")
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_LENGTH:
        raise BadFrame("event must be a non-empty string", "event", frame_id)
    data = message.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadFrame("data must be a JSON object", "data", frame_id)
    return Frame(event, data, frame_id)


def peek_id(text: str) -> FrameId | None:
    """The frame's id when it is readable, for errors about a frame that is otherwise refused."""
    try:
        return parse_frame(text).id
    except BadFrame as exc:
        return exc.frame_id


def reply(event: str, data: Any, frame_id: FrameId | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"event": event, "data": data}
    if frame_id is not None:
        frame["id"] = frame_id
    return frame


def error(status: int, message: str, frame_id: FrameId | None, **extra: Any) -> dict[str, Any]:
    return reply("error", {"status": status, "message": message, **extra}, frame_id)


def domain_error(exc: DomainError, frame_id: FrameId | None) -> dict[str, Any]:
    """The same status and detail REST would answer with (server/web/problems.py), plus its extras and
    its field errors when there are any."""
    extra = details(exc)
    if not extra.get("errors", True):
        del extra["errors"]
    return error(kind_of(exc).status, exc.detail, frame_id, **extra)


class TokenBucket:
    """Per-connection pacing: `burst` frames at once, refilled at `rate` per second.

    In-process on purpose: a connection lives on one process, so Redis would add a round trip per frame
    and buy nothing.
    """

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next frame would be admitted."""
        return max(0.0, (1.0 - self._tokens) / self.rate)
