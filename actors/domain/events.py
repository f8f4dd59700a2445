"""The events actors publish: one typed shape for every pushed event (docs/WEBSOCKET.md).

An event is built once (`make_event`, actors/hub.py) and may go to many places: the sockets of this
process, the Redis bus, the other processes' sockets. It is encoded once too: the first edge that needs
its JSON keeps it (`encoded`), the others reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    name: str  # "booking.created", "resource.busy.changed", "system.notification", …
    data: Mapping[str, Any]
    timestamp: str  # ISO-8601 UTC with `Z`, when it was made
    _encoded: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def wire(self) -> dict[str, Any]:
        """The frame a client receives: `{"event", "data", "timestamp"}`."""
        return {"event": self.name, "data": self.data, "timestamp": self.timestamp}

    def encoded(self, encode: Callable[[Any], str]) -> str:
        """`encode(self.wire())`, computed the first time only (the encoder is the edge's: JSON)."""
        if not self._encoded:
            self._encoded.append(encode(self.wire()))
        return self._encoded[0]

    @classmethod
    def from_wire(cls, frame: Mapping[str, Any]) -> Event:
        """The event another process published (its `wire()` form); KeyError/TypeError when malformed."""
        name, data, timestamp = frame["event"], frame["data"], frame["timestamp"]
        if not isinstance(name, str) or not isinstance(data, Mapping) or not isinstance(timestamp, str):
            raise TypeError("not an event")
        return cls(name, data, timestamp)
