"""The event hub: one per process, where actors publish and sockets subscribe, by key.

A socket subscribes to a user (its own room, or any it joins), a resource room, or every broadcast;
none of that involves an actor, so an idle actor stops whatever sockets are open. An actor publishes
once (`emit`, `emit_resource`, `emit_all`): the hub hands the event to this process's subscribers at
once, then to its relay — the Redis bus (server/events.py) — which sends it to the other processes,
whose bus hands it to their hub (`to_user`, `to_resource`, `to_everyone`). Without a relay (tests, a
single process) the hub is local only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.domain.errors import Unavailable
from actors.domain.events import Event
from actors.domain.views import iso

log = logging.getLogger(__name__)

Subscriber = Callable[[Event], None]


def make_event(name: str, data: dict[str, Any]) -> Event:
    """The one shape of a pushed event (docs/WEBSOCKET.md), for actors, workers and broadcasts alike."""
    return Event(name, data, iso(datetime.now(UTC)))


class Relay(Protocol):
    """The hub's way out of the process: publishes only, never delivers locally."""

    async def emit(self, user_id: uuid.UUID, event: Event) -> bool: ...

    async def emit_resource(self, resource_id: uuid.UUID, event: Event) -> None: ...

    async def emit_all(
        self, to_users: Sequence[tuple[uuid.UUID, Event]], to_resources: Sequence[tuple[uuid.UUID, Event]]
    ) -> None: ...

    async def broadcast(self, event: Event) -> None: ...

    async def announce(self, event: Event) -> None: ...


class Hub:
    __slots__ = ("_closed", "_everyone", "_relay", "_rooms")

    def __init__(self, relay: Relay | None = None) -> None:
        self._relay = relay
        # ("user", id) or ("resource", id) -> subscribers; a key leaves with its last subscriber.
        self._rooms: dict[Hashable, list[Subscriber]] = {}
        self._everyone: list[Subscriber] = []
        self._closed = False

    def close(self) -> None:
        """Refuse new subscribers (shutdown); events still reach the ones attached."""
        self._closed = True

    # --- subscribing (sockets) ----------------------------------------------------------------------

    def subscribe_user(self, user_id: uuid.UUID, subscriber: Subscriber) -> Callable[[], None]:
        return self._subscribe(("user", user_id), subscriber)

    def subscribe_resource(self, resource_id: uuid.UUID, subscriber: Subscriber) -> Callable[[], None]:
        return self._subscribe(("resource", resource_id), subscriber)

    def subscribe_all(self, subscriber: Subscriber) -> Callable[[], None]:
        """Receive every broadcast, whatever rooms the subscriber follows, even none."""
        self._refuse_when_closed()
        self._everyone.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._everyone:
                self._everyone.remove(subscriber)

        return unsubscribe

    def subscribers(self, user_id: uuid.UUID) -> int:
        """How many local subscribers a user's room has (metrics, tests)."""
        return len(self._rooms.get(("user", user_id), ()))

    def __len__(self) -> int:
        """Rooms with at least one subscriber."""
        return len(self._rooms)

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise Unavailable("the service is shutting down")

    def _subscribe(self, key: Hashable, subscriber: Subscriber) -> Callable[[], None]:
        self._refuse_when_closed()
        self._rooms.setdefault(key, []).append(subscriber)

        def unsubscribe() -> None:  # idempotent: a `finally` may run it after a failed attach
            subscribers = self._rooms.get(key)
            if subscribers is not None and subscriber in subscribers:
                subscribers.remove(subscriber)
                if not subscribers:
                    del self._rooms[key]

        return unsubscribe

    # --- local delivery (this process; the bus calls these for the other processes' events) --------

    def to_user(self, user_id: uuid.UUID, event: Event) -> None:
        self._fanout(self._rooms.get(("user", user_id)), event)

    def to_resource(self, resource_id: uuid.UUID, event: Event) -> None:
        self._fanout(self._rooms.get(("resource", resource_id)), event)

    def to_everyone(self, event: Event) -> None:
        """Once to each `subscribe_all` subscriber, not through the rooms."""
        self._fanout(self._everyone, event)

    @staticmethod
    def _fanout(subscribers: list[Subscriber] | None, event: Event) -> None:
        if not subscribers:
            return
        for subscriber in tuple(subscribers):
            try:
                subscriber(event)
            except Exception:  # one socket's failure must not cost the others their event
                log.exception("event subscriber failed")

    # --- publishing (actors, services): local subscribers first, then the other processes ---------

    async def emit(self, user_id: uuid.UUID, event: Event) -> None:
        """To the user's sockets here and in every other process."""
        self.to_user(user_id, event)
        if self._relay is not None:
            await self._relay.emit(user_id, event)

    async def emit_resource(self, resource_id: uuid.UUID, event: Event) -> None:
        self.to_resource(resource_id, event)
        if self._relay is not None:
            await self._relay.emit_resource(resource_id, event)

    async def emit_all(
        self, to_users: Sequence[tuple[uuid.UUID, Event]], to_resources: Sequence[tuple[uuid.UUID, Event]]
    ) -> None:
        """Several events at once: local delivery, then one message for every other process."""
        for user_id, event in to_users:
            self.to_user(user_id, event)
        for resource_id, event in to_resources:
            self.to_resource(resource_id, event)
        if self._relay is not None:
            await self._relay.emit_all(to_users, to_resources)

    async def broadcast(self, event: Event) -> None:
        self.to_everyone(event)
        if self._relay is not None:
            await self._relay.broadcast(event)

    async def announce(self, event: Event) -> None:
        """A broadcast that is all or nothing: published first, so a relay failure raises before any
        local socket got it (the caller answers 503 and a retry sends it once)."""
        if self._relay is not None:
            await self._relay.announce(event)
        self.to_everyone(event)
