"""Unit tests (no I/O) of the actor layer: real asyncio, pure-logic handlers, tight deadlines."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from actors.base import Actor, ActorStopped, Busy, Handler, Registry, message_context
from actors.domain.errors import Conflict, RateLimited, Unavailable
from actors.domain.events import Event
from actors.hub import Hub
from server.web.problems import kind_of

pytestmark = pytest.mark.timeout(5)

DEADLINE = 2.0  # seconds any single step may take before the test fails by name

MakeRegistry = Callable[..., Registry[str]]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Registries built with a handler factory; every one is closed (briefly) after the test."""
    made: list[Registry[str]] = []

    def make(factory: Callable[[str], Handler], **kwargs: Any) -> Registry[str]:
        registry: Registry[str] = Registry(factory, **kwargs)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await asyncio.wait_for(registry.close(grace=0.1), DEADLINE)


async def within(awaitable: Awaitable[Any], seconds: float = DEADLINE) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def until(predicate: Callable[[], bool], *, seconds: float = DEADLINE, what: str) -> None:
    """Yield to the loop until `predicate()` holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.005)


def actor_of(registry: Registry[str], key: str) -> Actor[str]:
    assert key in registry, f"no actor for {key!r}"
    return registry.get(key)


# --- (a) serialization per user ----------------------------------------------------------------------


async def test_asks_to_one_key_never_run_concurrently_and_answer_in_order(
    make_registry: MakeRegistry,
) -> None:
    active = 0
    max_active = 0
    handled: list[int] = []

    async def handler(n: int) -> int:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        await asyncio.sleep(0.002)  # a real wait: any concurrent run would interleave here
        handled.append(n)
        active -= 1
        return n * 10

    registry = make_registry(lambda key: handler)
    results = await within(asyncio.gather(*(registry.ask("alice", n) for n in range(50))))

    assert max_active == 1
    assert handled == list(range(50))
    assert results == [n * 10 for n in range(50)]


# --- (b) parallelism across users --------------------------------------------------------------------


async def test_asks_to_different_keys_overlap_in_time(make_registry: MakeRegistry) -> None:
    # Each handler waits for the other to have started: serialized actors would deadlock here.
    started = {"alice": asyncio.Event(), "bob": asyncio.Event()}
    other = {"alice": "bob", "bob": "alice"}

    def factory(key: str) -> Handler:
        async def handler(message: str) -> str:
            started[key].set()
            await started[other[key]].wait()
            return f"{key}:{message}"

        return handler

    registry = make_registry(factory)
    results = await within(asyncio.gather(registry.ask("alice", "a"), registry.ask("bob", "b")), 1.0)

    assert results == ["alice:a", "bob:b"]
    assert len(registry) == 2
    assert registry.get("alice").task is not registry.get("bob").task


# --- (c) results and errors go back to the caller ----------------------------------------------------


async def test_ask_returns_result_and_reraises_the_handlers_exception(make_registry: MakeRegistry) -> None:
    conflict = Conflict("overlaps", conflictingId="b-1")

    async def handler(message: str) -> str:
        if message == "domain":
            raise conflict
        if message == "plain":
            raise ValueError("bad value")
        return message.upper()

    registry = make_registry(lambda key: handler)
    assert await within(registry.ask("alice", "ok")) == "OK"
    actor = actor_of(registry, "alice")

    with pytest.raises(Conflict) as caught:
        await within(registry.ask("alice", "domain"))
    assert caught.value is conflict
    assert kind_of(caught.value).status == 409  # the web edge's answer (server/web/problems.py)
    assert caught.value.extra == {"conflictingId": "b-1"}

    with pytest.raises(ValueError, match="bad value"):
        await within(registry.ask("alice", "plain"))

    # The same actor lives on and handles the next message.
    assert await within(registry.ask("alice", "again")) == "AGAIN"
    assert actor_of(registry, "alice") is actor
    assert actor.task is not None and not actor.task.done()


# --- (d) crash isolation -----------------------------------------------------------------------------


async def test_a_failing_handler_for_one_user_never_touches_another(make_registry: MakeRegistry) -> None:
    bob_started = asyncio.Event()
    bob_release = asyncio.Event()

    def factory(key: str) -> Handler:
        async def handler(message: str) -> str:
            if key == "alice":
                raise RuntimeError("alice's handler blew up")
            bob_started.set()
            await bob_release.wait()
            return f"bob:{message}"

        return handler

    registry = make_registry(factory)
    bob_call = asyncio.ensure_future(registry.ask("bob", "in flight"))
    await within(bob_started.wait())
    bob = actor_of(registry, "bob")

    for _ in range(5):
        with pytest.raises(RuntimeError):
            await within(registry.ask("alice", "boom"))

    bob_release.set()
    assert await within(bob_call) == "bob:in flight"
    assert await within(registry.ask("bob", "next")) == "bob:next"
    assert actor_of(registry, "bob") is bob
    assert bob.task is not None and not bob.task.done()


async def test_a_killed_actor_fails_pending_asks_and_is_respawned(make_registry: MakeRegistry) -> None:
    started = asyncio.Event()
    never = asyncio.Event()
    spawned: list[str] = []

    def factory(key: str) -> Handler:
        spawned.append(key)

        async def handler(message: str) -> str:
            if message == "block":
                started.set()
                await never.wait()
            return message

        return handler

    registry = make_registry(factory)
    in_flight = asyncio.ensure_future(registry.ask("alice", "block"))
    await within(started.wait())
    old = actor_of(registry, "alice")
    queued_direct = asyncio.ensure_future(old.ask("queued"))  # straight at the actor: no retry
    queued_via_registry = asyncio.ensure_future(registry.ask("alice", "retried"))
    await until(lambda: old.depth == 2, what="two queued messages")

    assert old.task is not None
    old.task.cancel()

    with pytest.raises(Unavailable):
        await within(in_flight)
    with pytest.raises(ActorStopped):
        await within(queued_direct)
    # The registry retries a message the dead actor never took on a fresh actor.
    assert await within(queued_via_registry) == "retried"

    fresh = actor_of(registry, "alice")
    assert fresh is not old
    assert fresh.task is not None and not fresh.task.done()
    assert await within(registry.ask("alice", "next")) == "next"
    assert spawned == ["alice", "alice"]


# --- (e) idle stop -----------------------------------------------------------------------------------


async def test_an_idle_actor_leaves_the_registry(make_registry: MakeRegistry) -> None:
    async def handler(message: str) -> str:
        return message

    registry = make_registry(lambda key: handler, idle_timeout=0.05)
    assert await within(registry.ask("alice", "hi")) == "hi"
    actor = actor_of(registry, "alice")

    await until(lambda: "alice" not in registry, what="the idle actor to stop")
    assert actor.task is not None and actor.task.done()
    assert not actor.accepting
    # The next ask spawns a fresh actor.
    assert await within(registry.ask("alice", "back")) == "back"
    assert actor_of(registry, "alice") is not actor


async def test_an_actor_kept_busy_past_its_idle_timeout_stays(make_registry: MakeRegistry) -> None:
    """The idle timer measures a wait for the next message, not the actor's age: asks spaced closer
    than the timeout, over several timeouts, are all served by the one actor."""

    async def handler(message: int) -> int:
        return message

    registry = make_registry(lambda key: handler, idle_timeout=0.2)
    assert await within(registry.ask("bob", 0)) == 0
    actor = actor_of(registry, "bob")
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 0.8:  # four idle timeouts
        n += 1
        assert await within(registry.ask("bob", n)) == n
        assert actor_of(registry, "bob") is actor, (
            f"the actor stopped after {time.monotonic() - started:.2f}s"
        )
        await asyncio.sleep(0.05)
    await until(lambda: "bob" not in registry, what="the actor to stop once left idle")


async def test_an_idle_actor_stops_while_its_key_has_hub_subscribers(make_registry: MakeRegistry) -> None:
    """Subscribers live in the hub, not on the actor: they keep no idle actor alive, and the actor
    spawned afterwards publishes to the same subscribers."""
    hub = Hub()
    seen: list[Event] = []
    key = uuid.uuid4()

    async def handler(message: str) -> str:
        await hub.emit(key, ev(message))
        return message

    registry: Registry[uuid.UUID] = Registry(lambda k: handler, idle_timeout=0.05)
    try:
        unsubscribe = hub.subscribe_user(key, seen.append)
        assert await within(registry.ask(key, "one")) == "one"
        first = registry.get(key)
        await until(lambda: key not in registry, what="the idle actor to stop with a subscriber attached")
        assert first.task is not None and first.task.done()
        assert await within(registry.ask(key, "two")) == "two"
        assert seen == [ev("one"), ev("two")]
        unsubscribe()
    finally:
        await within(registry.close(grace=0.1))


async def test_a_full_mailbox_answers_busy_at_once(make_registry: MakeRegistry) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(message: int) -> int:
        if message == 0:
            started.set()
            await release.wait()
        return message

    registry = make_registry(lambda key: handler, mailbox_size=2)
    first = asyncio.ensure_future(registry.ask("alice", 0))
    await within(started.wait())
    queued = [asyncio.ensure_future(registry.ask("alice", n)) for n in (1, 2)]
    actor = actor_of(registry, "alice")
    await until(lambda: actor.depth == 2, what="a full mailbox")

    for n in (3, 4):
        # At once: a queued ask would block until released, so the 0.1 s deadline would fire instead.
        with pytest.raises(Busy) as caught:
            await within(registry.ask("alice", n), 0.1)
        assert isinstance(caught.value, RateLimited)
        assert kind_of(caught.value).status == 429
        assert caught.value.retry_after >= 1
    assert actor.depth == 2

    # Another user is not affected by alice's full mailbox.
    assert await within(registry.ask("bob", 7)) == 7

    release.set()
    assert await within(asyncio.gather(first, *queued)) == [0, 1, 2]
    assert await within(registry.ask("alice", 5)) == 5


# --- (g) drained shutdown ----------------------------------------------------------------------------


async def test_close_drains_queued_messages_then_refuses_new_ones(make_registry: MakeRegistry) -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    handled: list[str] = []

    async def handler(message: str) -> str:
        if message == "first":
            started.set()
            await gate.wait()
        await asyncio.sleep(0)
        handled.append(message)
        return message.upper()

    registry = make_registry(lambda key: handler)
    calls = [asyncio.ensure_future(registry.ask("alice", "first"))]
    await within(started.wait())
    calls += [asyncio.ensure_future(registry.ask("alice", m)) for m in ("second", "third", "fourth")]
    calls.append(asyncio.ensure_future(registry.ask("bob", "other")))
    await until(lambda: registry.mailbox_depth == 3, what="queued messages")

    closing = asyncio.ensure_future(registry.close(grace=5))
    await asyncio.sleep(0)  # let close() start: it refuses new work before its first await
    assert not closing.done()
    for key in ("alice", "carol"):
        with pytest.raises(Unavailable):
            await within(registry.ask(key, "late"))

    gate.set()
    await within(closing)
    assert await within(asyncio.gather(*calls)) == ["FIRST", "SECOND", "THIRD", "FOURTH", "OTHER"]
    assert sorted(handled) == sorted(["first", "second", "third", "fourth", "other"])
    assert "late" not in handled
    assert len(registry) == 0


async def test_close_cancels_a_handler_that_never_finishes_after_the_grace(
    make_registry: MakeRegistry,
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()
    cancelled = False

    async def handler(message: str) -> str:
        nonlocal cancelled
        if message == "stuck":
            started.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled = True
                raise
        return message

    registry = make_registry(lambda key: handler)
    stuck = asyncio.ensure_future(registry.ask("alice", "stuck"))
    await within(started.wait())
    behind = asyncio.ensure_future(registry.ask("alice", "behind"))
    await until(lambda: registry.mailbox_depth == 1, what="a queued message")

    began = time.monotonic()
    await within(registry.close(grace=0.1), 1.0)
    elapsed = time.monotonic() - began

    assert 0.1 <= elapsed < 1.0
    assert cancelled
    outcomes = await within(asyncio.gather(stuck, behind, return_exceptions=True))
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    assert len(registry) == 0


# --- (h) hub subscribers (actors/hub.py) --------------------------------------------------------------

ALICE, BOB, NOBODY = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def ev(n: object) -> Event:
    return Event("test.event", {"n": n}, "2026-01-01T00:00:00Z")


async def test_subscribe_returns_an_unsubscribe() -> None:
    hub = Hub()
    seen: list[Event] = []
    unsubscribe = hub.subscribe_user(ALICE, seen.append)

    await hub.emit(ALICE, ev(1))
    assert seen == [ev(1)]

    unsubscribe()
    unsubscribe()  # idempotent: a `finally` may run it after a failed attach
    await hub.emit(ALICE, ev(2))
    assert seen == [ev(1)]
    assert hub.subscribers(ALICE) == 0 and len(hub) == 0  # the room left with its last subscriber


async def test_a_failing_subscriber_does_not_break_the_others() -> None:
    hub = Hub()
    before: list[Event] = []
    after: list[Event] = []
    bob: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("socket gone")

    hub.subscribe_user(ALICE, before.append)
    hub.subscribe_user(ALICE, broken)
    hub.subscribe_user(ALICE, after.append)
    hub.subscribe_user(BOB, bob.append)
    for subscriber in (before.append, broken, after.append):
        hub.subscribe_all(subscriber)

    await hub.emit(ALICE, ev(1))
    await hub.broadcast(ev(2))

    assert before == [ev(1), ev(2)]
    assert after == [ev(1), ev(2)]
    # A broadcast goes to `subscribe_all` subscribers only, once each, not through the rooms.
    assert bob == []


async def test_user_and_resource_rooms_are_apart_and_a_key_without_subscribers_gets_nothing() -> None:
    hub = Hub()
    user: list[Event] = []
    resource: list[Event] = []
    everyone: list[Event] = []
    hub.subscribe_user(ALICE, user.append)
    hub.subscribe_resource(ALICE, resource.append)  # the same id as a resource: another room
    unsubscribe = hub.subscribe_all(everyone.append)
    await hub.emit(NOBODY, ev(1))
    await hub.emit_all([(ALICE, ev(2))], [(ALICE, ev(3))])
    await hub.emit_resource(ALICE, ev(4))
    await hub.broadcast(ev(5))
    unsubscribe()
    await hub.broadcast(ev(6))

    assert user == [ev(2)]
    assert resource == [ev(3), ev(4)]
    assert everyone == [ev(5)]
    assert len(hub) == 2


async def test_a_closed_hub_refuses_subscribers_but_still_delivers() -> None:
    hub = Hub()
    seen: list[Event] = []
    hub.subscribe_user(ALICE, seen.append)
    hub.close()
    for subscribe in (
        lambda: hub.subscribe_user(BOB, seen.append),
        lambda: hub.subscribe_resource(BOB, seen.append),
        lambda: hub.subscribe_all(seen.append),
    ):
        with pytest.raises(Unavailable):
            subscribe()
    await hub.emit(ALICE, ev(1))
    assert seen == [ev(1)]


# --- (i) context isolation ---------------------------------------------------------------------------

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_request_id", default=None)


async def test_the_actor_task_does_not_inherit_the_spawning_callers_context(
    make_registry: MakeRegistry,
) -> None:
    async def handler(message: str) -> tuple[str, str | None, str | None]:
        return message, request_id.get(), message_context.get()

    registry = make_registry(lambda key: handler)

    async def call(rid: str | None, message: str) -> tuple[str, str | None, str | None]:
        # Each call runs in its own task (its own copy of the context), like a request handler.
        request_id.set(rid)
        message_context.set(rid)
        result: tuple[str, str | None, str | None] = await registry.ask("alice", message)
        return result

    # The first call spawns the actor while its request id is set in the caller's context.
    first = await within(asyncio.ensure_future(call("req-A", "one")))
    assert first == ("one", None, "req-A")

    # The message context is bound per message: it follows the caller, never the previous message.
    second, third = await within(
        asyncio.gather(
            asyncio.ensure_future(call("req-B", "two")), asyncio.ensure_future(call(None, "three"))
        )
    )
    assert second == ("two", None, "req-B")
    assert third == ("three", None, None)


async def test_a_crashed_actor_is_replaced_on_the_next_ask(make_registry: MakeRegistry) -> None:
    async def handler(message: str) -> str:
        return message

    registry = make_registry(lambda key: handler)
    assert await within(registry.ask("alice", "one")) == "one"
    first = actor_of(registry, "alice")
    assert first.task is not None
    first.task.cancel()
    await until(lambda: "alice" not in registry, what="the cancelled actor to be forgotten")
    assert await within(registry.ask("alice", "two")) == "two"
    assert actor_of(registry, "alice") is not first
