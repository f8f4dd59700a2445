"""Actors: one named task and one bounded mailbox each, owned by a registry.

`ask` returns the handler's result or raises its exception in the caller. A full mailbox answers at once
(`Busy`), it never queues without bound. Idle actors stop by themselves (sockets subscribe to the
process's event hub, actors/hub.py, not to an actor, so they keep none alive); stopping drains what
is already queued and fails anything that arrives later, so no caller ever hangs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from actors.domain.errors import RateLimited, Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Handler = Callable[[Any], Awaitable[Any]]

# Bound per message, so a request id never leaks from one user's message into another's log lines.
message_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor_message", default=None)


class ActorStopped(Exception):
    """The actor stopped before taking the message; the registry retries on a fresh actor."""


class Busy(RateLimited):
    def __init__(self) -> None:
        super().__init__("too many requests in flight for this user; retry shortly", retry_after=1)


@dataclass(slots=True)
class Envelope:
    message: Any
    reply: asyncio.Future[Any]
    context: str | None = None


_STOP = object()


class Mailbox:
    """A FIFO with one reader. Bounds are the actor's business (`ask` checks the depth first).

    asyncio.Queue carries three deques and an Event for features one reader never uses: this is a
    third of its memory, which matters at thousands of idle actors (docs/BENCHMARKS.md)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Envelope | object] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Envelope | object) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> Envelope | object:
        return self._items.popleft()

    async def get(self, idle: float) -> Envelope | object:
        """The next item; TimeoutError when none arrives within `idle` seconds. The timer is armed only
        when the mailbox is empty, and is one loop timer, not an `asyncio.timeout` scope per message
        (docs/BENCHMARKS.md)."""
        while not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(idle, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._items.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass(eq=False, slots=True)
class Actor(Generic[K]):
    key: K
    handler: Handler
    mailbox_size: int
    idle_timeout: float
    on_exit: Callable[[Actor[K]], None]
    kind: str = "user"
    task: asyncio.Task[None] | None = None
    _mailbox: Mailbox = field(default_factory=Mailbox)
    _stopping: bool = False

    @property
    def name(self) -> str:
        return f"actor:{self.kind}:{self.key}"

    @property
    def depth(self) -> int:
        return len(self._mailbox)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    def start(self) -> None:
        # A fresh context: the spawning request's context variables must not leak into the actor.
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=self.name, context=contextvars.Context()
        )
        self.task.add_done_callback(self._finished)

    async def ask(self, message: Any) -> Any:
        if self._stopping:
            raise ActorStopped
        if len(self._mailbox) >= self.mailbox_size:
            raise Busy
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._mailbox.put(Envelope(message, reply, message_context.get()))
        return await reply

    def stop(self) -> None:
        """Stop after what is already queued (drain)."""
        if not self._stopping:
            self._stopping = True
            self._mailbox.put(_STOP)

    async def _run(self) -> None:
        while True:
            try:
                item = await self._mailbox.get(self.idle_timeout)
            except TimeoutError:
                # Decided without awaiting, so no ask can slip in between the check and the stop.
                if not self._mailbox:
                    self._stopping = True
                    return
                continue
            if item is _STOP:
                return
            assert isinstance(item, Envelope)  # noqa: S101
            await self._handle(item)

    async def _handle(self, envelope: Envelope) -> None:
        if envelope.reply.done():  # the caller gave up (cancelled); nothing to do
            return
        token = message_context.set(envelope.context)
        try:
            result = await self.handler(envelope.message)
        except asyncio.CancelledError:
            if not envelope.reply.done():
                envelope.reply.set_exception(Unavailable("shutting down"))
            raise
        except Exception as exc:  # every failure goes back to its caller; the actor lives on
            if not envelope.reply.done():
                envelope.reply.set_exception(exc)
        else:
            if not envelope.reply.done():
                envelope.reply.set_result(result)
        finally:
            message_context.reset(token)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._stopping = True
        # Fail whatever is still queued (a crash or cancellation), so no caller hangs.
        while self._mailbox:
            item = self._mailbox.take()
            if isinstance(item, Envelope) and not item.reply.done():
                item.reply.set_exception(ActorStopped())
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", self.name, exc_info=task.exception())
        self.on_exit(self)


class Registry(Generic[K]):
    """Owns every actor of a kind in a process: spawn on demand, route asks, drain on shutdown."""

    def __init__(
        self,
        handler_factory: Callable[[K], Handler],
        *,
        mailbox_size: int = 256,
        idle_timeout: float = 300.0,
        kind: str = "user",
    ) -> None:
        """`kind` names the actors' tasks (`actor:<kind>:<key>`): users, or resources."""
        self._kind = kind
        self._factory = handler_factory
        self._mailbox_size = mailbox_size
        self._idle_timeout = idle_timeout
        self._actors: dict[K, Actor[K]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, key: object) -> bool:
        return key in self._actors

    @property
    def mailbox_depth(self) -> int:
        return sum(actor.depth for actor in self._actors.values())

    def get(self, key: K) -> Actor[K]:
        if self._closed:
            raise Unavailable("the service is shutting down")
        actor = self._actors.get(key)
        if actor is None or not actor.accepting:
            actor = Actor(
                key, self._factory(key), self._mailbox_size, self._idle_timeout, self._forget, self._kind
            )
            self._actors[key] = actor
            actor.start()
        return actor

    async def ask(self, key: K, message: Any) -> Any:
        for _ in range(3):
            try:
                return await self.get(key).ask(message)
            except ActorStopped:
                continue
        raise Unavailable("the service is shutting down")

    def _forget(self, actor: Actor[K]) -> None:
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]  # the next ask spawns a fresh one

    async def close(self, grace: float = 10.0) -> None:
        """Refuse new work, drain every mailbox, then cancel whatever is still running."""
        self._closed = True
        actors = list(self._actors.values())
        for actor in actors:
            actor.stop()
        tasks = [a.task for a in actors if a.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
