"""Cross-process event fan-out through Redis pub/sub.

The bus is the hub's relay (actors/hub.py): the hub hands an event to this process's sockets, the bus
publishes it on one channel; every other web process (workers only publish, through a bus without a
hub) receives it and hands it to its own hub. A process ignores its own messages by origin id. Per-user
order holds because a user's events are emitted one at a time by that user's actor.

When the listener loses Redis and subscribes again — in its own loop, or silently inside redis-py,
which reconnects a pub/sub connection and re-subscribes on its own — whatever was published in between
is gone. The reconnect hooks run, and every local socket is told (`RESYNC`) so that clients re-read
instead of trusting a stream with a hole in it.

Publishing coalesces: while one PUBLISH is on the wire, the events emitted meanwhile wait and go out
together in the next one (one `batch` message), each emitter still told how many processes received
it. A quiet process publishes each event at once, alone (the same message as ever); a busy one sends a
PUBLISH per round trip instead of per event, and every listener parses one message instead of many
(docs/BENCHMARKS.md). Order is kept: parts leave in the order they were emitted. A listener drops its
own messages by their first bytes, before parsing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from actors.domain.events import Event
from actors.hub import Hub, make_event
from server.base.json import dumps, loads
from server.bus.redisgate import RedisDown, RedisGate

log = logging.getLogger(__name__)

BROADCAST = "*"
MAX_BATCH = 256  # emits per PUBLISH (an emit_all is one): bounds one message, and a listener's parse
RESYNC_MESSAGE = (
    "Live updates were interrupted and some events may have been missed; re-read what you display "
    "(get-bookings)."
)


class EventBus:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        gate: RedisGate | None = None,
    ) -> None:
        """`gate`: a web process publishes on the request path, so within REDIS_TIMEOUT and not at all
        while Redis is known to be down (server/bus/redisgate.py). Workers publish without one."""
        self._redis = redis
        self._gate = gate
        self.channel = f"{prefix}events"
        self._hub: Hub | None = None  # where other processes' events go; none in a worker (publish only)
        self.origin = uuid.uuid4().hex
        self.connected = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._signals: dict[str, list[Callable[[str], None]]] = {}
        self._on_reconnect: list[Callable[[], None]] = []
        self._subscribed_before = False
        self._subscriptions = 0  # subscribes so far, ours and redis-py's own
        # Coalescing (module docstring): parts waiting for the PUBLISH in flight to return.
        self._publishing = False
        self._waiting: list[tuple[list[str], asyncio.Future[int]]] = []
        self._drain: asyncio.Task[None] | None = None
        own = f'{{"origin":"{self.origin}",'
        self._own = (own, own.encode())

    def on_signal(self, name: str, callback: Callable[[str], None]) -> None:
        """Call `callback(data)` when another process sends signal `name` (see `signal`)."""
        self._signals.setdefault(name, []).append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after the listener lost Redis and subscribed again: whatever was published
        in between (events, signals) was missed."""
        self._on_reconnect.append(callback)

    async def signal(self, name: str, data: str) -> None:
        """A process-to-process notice (not for sockets), e.g. "user-changed" with the user's id."""
        try:
            await self._publish_message(self._message([], signal=(name, data)))
        except RedisDown as exc:  # the gate has already said Redis is down, once
            log.info("signal %s not published (%s)", name, exc)
        except (RedisError, OSError) as exc:
            log.warning("signal %s not published (%s)", name, exc)

    def start(self, hub: Hub) -> None:
        """Listen, handing what other processes publish to `hub`."""
        self._hub = hub
        self._task = asyncio.create_task(self.listen(), name="event-bus-listener")

    async def close(self) -> None:
        """Stop the listener. The flag ends the loop within a poll interval even if a cancellation is
        swallowed inside redis-py (seen when cancelling during connect)."""
        self._stopping = True
        if self._drain is not None:  # what was emitted before the close still goes out
            await asyncio.wait({self._drain}, timeout=3.0)
        if self._task is None:
            return
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=3.0)
        if not done:
            log.warning("event listener did not stop within 3s")

    async def emit(self, user_id: uuid.UUID, event: Event) -> bool:
        """Publish to every other process (the hub has delivered locally). Never raises for Redis;
        returns whether a web process's listener received it (Redis answered and counted at least one
        subscriber): the reminder outbox retries when it did not, e.g. in the half second after a Redis
        restart before the listeners have subscribed again."""
        return await self._publish(str(user_id), event)

    async def emit_resource(self, resource_id: uuid.UUID, event: Event) -> None:
        """Like `emit`, to the watchers of a resource (WebSocket `join-resource-room`) in every process."""
        try:
            await self._send([_part("resource", str(resource_id), event)])
        except RedisDown as exc:
            log.info("event not published (%s); remote watchers miss %s", exc, event.name)
        except (RedisError, OSError) as exc:
            log.warning("event publish failed (%s); remote watchers miss %s", type(exc).__name__, event.name)

    async def emit_all(
        self, to_users: Sequence[tuple[uuid.UUID, Event]], to_resources: Sequence[tuple[uuid.UUID, Event]]
    ) -> None:
        """`emit` and `emit_resource` for several events at once: ONE message for every other process
        (a resource booking's booking.* and resource.busy.changed events)."""
        batch = [_part("user", str(user_id), event) for user_id, event in to_users]
        batch += [_part("resource", str(resource_id), event) for resource_id, event in to_resources]
        try:
            await self._send(batch)
        except RedisDown as exc:
            log.info("events not published (%s); remote sockets miss %d", exc, len(batch))
        except (RedisError, OSError) as exc:
            log.warning("event publish failed (%s); remote sockets miss %d", type(exc).__name__, len(batch))

    async def broadcast(self, event: Event) -> None:
        await self._publish(BROADCAST, event)

    async def announce(self, event: Event) -> None:
        """A broadcast that is all or nothing: a Redis failure raises (the hub delivers locally only
        after this returns), so the caller can answer 503 and a retry sends it once. Through the gate
        like every request-path call: RedisDown within REDIS_TIMEOUT, or at once while Redis is known
        to be down (RedisError / OSError only for a bus without a gate)."""
        await self._send([_part("user", BROADCAST, event)])

    async def _publish(self, target: str, event: Event) -> bool:
        try:
            receivers = await self._send([_part("user", target, event)])
        except RedisDown as exc:  # the gate has already said Redis is down, once
            log.info("event not published (%s); remote sockets miss %s", exc, event.name)
            return False
        except (RedisError, OSError) as exc:
            # The change is committed and local sockets have it; remote sockets miss this one event.
            log.warning("event publish failed (%s); remote sockets miss %s", type(exc).__name__, event.name)
            return False
        return receivers > 0

    async def _send(self, parts: list[str]) -> int:
        """Publish `parts` (module docstring: at once when nothing is in flight, else with the next
        PUBLISH); the number of subscribers that received them. Raises what the PUBLISH raised."""
        if self._publishing:
            waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiting.append((parts, waiter))
            return await waiter
        self._publishing = True
        try:
            return await self._publish_message(self._message(parts))
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """The PUBLISH in flight returned: what waited for it goes next, in a task of its own (the
        emitter that was on the wire is not kept waiting for the others)."""
        if self._waiting:
            self._drain = asyncio.create_task(self._send_waiting(), name="event-bus-publish")
        else:
            self._publishing = False

    async def _send_waiting(self) -> None:
        taken: list[tuple[list[str], asyncio.Future[int]]] = []
        try:
            while self._waiting:
                taken, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                parts = [part for chunk, _ in taken for part in chunk]
                try:
                    receivers = await self._publish_message(self._message(parts))
                except Exception as exc:  # each emitter logs or raises it, as for its own PUBLISH
                    _settle(taken, exc)
                else:
                    _settle(taken, receivers)
                taken = []
        finally:  # cancelled (shutdown): what was not published is told so
            _settle(taken + self._waiting, ConnectionError("event bus closed"))
            self._waiting = []
            self._publishing = False
            self._drain = None

    def _message(self, parts: list[str], *, signal: tuple[str, str] | None = None) -> str:
        """One message of this origin: a signal, one event (the original form) or a batch. Built from
        parts already encoded, so an event is encoded once, and so it starts with `self._own`."""
        if signal is not None:
            return f'{self._own[0]}"signal":{dumps(signal[0])},"data":{dumps(signal[1])}}}'
        if len(parts) == 1:
            return f"{self._own[0]}{parts[0][1:]}"
        return f'{self._own[0]}"batch":[{",".join(parts)}]}}'

    async def _publish_message(self, payload: str) -> int:
        """PUBLISH; the number of subscribers that received it."""
        if self._gate is None:
            return int(await self._redis.publish(self.channel, payload))
        return int(await self._gate.call(lambda: self._redis.publish(self.channel, payload), "event publish"))

    def _dispatch(self, raw: bytes | str) -> None:
        if raw.startswith(self._own[isinstance(raw, bytes)]):  # type: ignore[arg-type]
            return  # our own: dropped before parsing
        try:
            message = loads(raw)
            if message["origin"] == self.origin:
                return
            if "signal" in message:
                for callback in self._signals.get(message["signal"], ()):
                    try:
                        callback(str(message["data"]))
                    except Exception:  # one hook's bug must not end the listener for every socket
                        log.exception("signal %s hook failed", message["signal"])
                return
            for part in message.get("batch", (message,)):
                self._deliver(part)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed event on %s", self.channel)

    def _deliver(self, part: dict[str, Any]) -> None:
        """One event of a message: to a resource's watchers, a user's sockets, or everyone."""
        if self._hub is None:
            return
        if "resource" in part:
            self._hub.to_resource(uuid.UUID(part["resource"]), Event.from_wire(part["event"]))
            return
        target, event = part["user"], Event.from_wire(part["event"])
        if target == BROADCAST:
            self._hub.to_everyone(event)
        else:
            self._hub.to_user(uuid.UUID(target), event)

    async def listen(self) -> None:
        """Run until cancelled; re-subscribes with backoff whenever Redis goes away."""
        backoff = 0.1
        while not self._stopping:
            try:
                # aclosing: whatever ends the loop, the pub/sub connection is closed now, not at GC.
                async with contextlib.aclosing(self._messages()) as messages:
                    async for raw in messages:
                        backoff = 0.1
                        self._dispatch(raw)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("event listener lost Redis (%s); retrying in %.1fs", type(exc).__name__, backoff)
            except Exception:  # never let the listener die quietly: this process would stop hearing peers
                log.exception("event listener failed; subscribing again in %.1fs", backoff)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _messages(self) -> AsyncGenerator[bytes | str, None]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        connection = None
        try:
            await pubsub.subscribe(self.channel)
            # redis-py reconnects this connection by itself when a read fails and the server answers
            # again (a retry, or the next read), re-subscribing in its own connect callback; ours runs
            # after it, so a reconnect nobody raised about is still one we act on.
            connection = pubsub.connection
            if connection is not None:
                connection.register_connect_callback(self._subscribed)
            self._subscribed()
            while not self._stopping:
                subscriptions = self._subscriptions
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except (RedisError, OSError):
                    # With no retries left redis-py still reconnects (and re-subscribes) before it
                    # raises; that reconnect was reported already, so keep reading, do not report twice.
                    if (
                        self._subscriptions != subscriptions
                        and connection is not None
                        and connection.is_connected
                    ):
                        continue
                    raise
                if message is not None and message.get("type") == "message":
                    yield message["data"]
        finally:
            if connection is not None:  # it goes back to the pool, to serve other commands
                connection.deregister_connect_callback(self._subscribed)
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _subscribed(self, connection: object = None) -> None:
        """Subscribed (again): after the first time, events may have been missed."""
        self._subscriptions += 1
        self.connected.set()
        if self._gate is not None:
            self._gate.answered()  # Redis answers again: request-path calls stop skipping it at once
        if not self._subscribed_before:
            self._subscribed_before = True
            return
        log.warning("event listener subscribed to Redis again; telling local sockets to re-read")
        for callback in self._on_reconnect:
            try:
                callback()
            except Exception:
                log.exception("reconnect hook failed")
        if self._hub is not None:
            self._hub.to_everyone(
                make_event("system.notification", {"message": RESYNC_MESSAGE, "data": {"reason": "resync"}})
            )


def _part(kind: str, target: str, event: Event) -> str:
    """One event of a message, encoded: `{"user": …, "event": …}` or `{"resource": …, "event": …}`."""
    return f'{{"{kind}":{dumps(target)},"event":{event.encoded(dumps)}}}'


def _settle(waiting: list[tuple[list[str], asyncio.Future[int]]], outcome: int | Exception) -> None:
    for _, waiter in waiting:
        if waiter.done():  # its emitter was cancelled meanwhile
            continue
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
