"""EventBus signals and events between processes, coalesced publishing, and the reconnect hook, on a
real Redis.

Two buses on one prefix stand for two processes. The reconnect test kills only its own bus's pub/sub
connection (found by client name), so other tests sharing the Redis are untouched. It runs twice: with
a client that does not retry (the listener's own loop subscribes again) and with the processes' client
options (server/bus/redisconf.py), where redis-py reconnects and re-subscribes inside its retry, unseen.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from actors.domain.events import Event
from actors.hub import Hub, make_event
from server.base.settings import Settings
from server.bus.events import MAX_BATCH, EventBus
from server.bus.redisconf import client_options
from tests.support import wait_for


@pytest.fixture(params=["no retry", "redisconf"])
async def buses(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[EventBus, EventBus, str]]:
    prefix = f"sig{uuid.uuid4().hex[:10]}:"
    name = f"bus-{uuid.uuid4().hex[:12]}"
    options = client_options(Settings(redis_url=redis_url)) if request.param == "redisconf" else {}
    r1, r2 = Redis.from_url(redis_url, **options), Redis.from_url(redis_url, client_name=name, **options)
    one = EventBus(r1, prefix=prefix)
    two = EventBus(r2, prefix=prefix)
    yield one, two, name
    for bus in (one, two):
        await bus.close()
    await r1.aclose()
    await r2.aclose()


async def test_a_signal_reaches_the_other_process_but_not_its_sender(
    buses: tuple[EventBus, EventBus, str],
) -> None:
    one, two, _ = buses
    got: dict[str, list[str]] = {"one": [], "two": []}
    arrived = asyncio.Event()
    one.on_signal("user-changed", got["one"].append)

    def on_two(data: str) -> None:
        got["two"].append(data)
        arrived.set()

    two.on_signal("user-changed", on_two)
    two.on_signal("other", lambda data: got["two"].append("wrong signal"))
    for bus in (one, two):
        bus.start(Hub())
    await asyncio.wait_for(asyncio.gather(one.connected.wait(), two.connected.wait()), 10)
    user_id = str(uuid.uuid4())
    await one.signal("user-changed", user_id)
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == {"one": [], "two": [user_id]}


async def test_a_failing_signal_hook_does_not_end_the_listener(
    buses: tuple[EventBus, EventBus, str],
) -> None:
    """A hook that raises is logged; the listener keeps dispatching (before, the exception escaped
    `listen` and the process stopped hearing every other process: events, signals, reconnects)."""
    one, two, _ = buses
    heard: list[str] = []
    arrived = asyncio.Event()

    def broken(data: str) -> None:
        raise RuntimeError("a hook's bug")

    def on_later(data: str) -> None:
        heard.append(data)
        arrived.set()

    two.on_signal("first", broken)
    two.on_signal("later", on_later)
    two.start(Hub())
    await asyncio.wait_for(two.connected.wait(), 10)
    await one.signal("first", "boom")
    await one.signal("later", "still listening")
    await asyncio.wait_for(arrived.wait(), 5)
    assert heard == ["still listening"]


async def test_losing_redis_calls_the_reconnect_hook_after_subscribing_again(
    buses: tuple[EventBus, EventBus, str], redis_url: str
) -> None:
    one, two, name = buses
    reconnected = asyncio.Event()
    calls: list[None] = []
    two.on_reconnect(lambda: calls.append(None))
    two.on_reconnect(reconnected.set)
    heard: list[str] = []
    two.on_signal("probe", heard.append)
    two.start(Hub())
    await asyncio.wait_for(two.connected.wait(), 10)
    assert not reconnected.is_set()  # the first subscription is not a reconnect

    admin = Redis.from_url(redis_url)
    try:
        clients = await admin.client_list(_type="pubsub")
        ours = [c["id"] for c in clients if c.get("name") == name]
        assert ours, "the bus's pub/sub connection is not visible"
        for client_id in ours:
            await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()
    await asyncio.wait_for(reconnected.wait(), 10)

    async def listening_again() -> bool:
        await one.signal("probe", "after")
        return bool(heard)

    await wait_for(listening_again, within=10, interval=0.1, what="the bus hearing signals again")
    assert two.connected.is_set()
    assert len(calls) == 1, "one lost connection is one reconnect"


async def test_events_emitted_while_a_publish_is_in_flight_go_out_together_in_order(
    buses: tuple[EventBus, EventBus, str], redis_url: str
) -> None:
    """The first emit publishes at once; the ones emitted while it is on the wire share the next
    PUBLISH (at most MAX_BATCH a message). The other process gets every event, in emit order, and
    every emitter is told it was received; the sender's own hub gets none of them back."""
    one, two, _ = buses
    got: list[Event] = []
    echoed: list[Event] = []
    users = [uuid.uuid4() for _ in range(5)]
    receiver, sender = Hub(), Hub()
    for user in users:
        receiver.subscribe_user(user, got.append)
        sender.subscribe_user(user, echoed.append)
    one.start(sender)
    two.start(receiver)
    raw = Redis.from_url(redis_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(one.channel)
    try:
        await asyncio.wait_for(asyncio.gather(one.connected.wait(), two.connected.wait()), 10)
        count = MAX_BATCH + 40
        events = [make_event("booking.created", {"n": n}) for n in range(count)]
        received = await asyncio.gather(*(one.emit(users[n % 5], events[n]) for n in range(count)))
        assert all(received)

        async def all_arrived() -> bool:
            return len(got) == count

        await wait_for(all_arrived, within=10, what="every event in the other process")
        assert [e.data["n"] for e in got] == list(range(count))
        sizes: list[int] = []  # events per message on the channel
        async with asyncio.timeout(10):
            while sum(sizes) < count:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    sizes.append(len(json.loads(message["data"]).get("batch", [None])))
        assert sizes == [1, MAX_BATCH, count - 1 - MAX_BATCH]  # the first alone, then in turn
        assert echoed == []
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await raw.aclose()


async def test_a_failed_coalesced_publish_reports_to_every_emitter_that_shared_it(redis_url: str) -> None:
    """Redis refuses: the first emitter and each one that waited for the next PUBLISH get False (the
    reminder outbox retries on it), none hangs, and the bus publishes again once Redis answers."""
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    bus = EventBus(dead, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        event = make_event("booking.deleted", {"id": "x"})
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(bus.emit(uuid.uuid4(), event) for _ in range(20))), 10
        )
        assert outcomes == [False] * 20
        assert await asyncio.wait_for(bus.emit(uuid.uuid4(), event), 5) is False  # not stuck
    finally:
        await bus.close()
        await dead.aclose()


async def test_malformed_messages_on_the_channel_are_ignored_and_the_listener_keeps_delivering(
    buses: tuple[EventBus, EventBus, str], redis_url: str
) -> None:
    """Anything on the channel that is not a well-formed event (not JSON, no origin, an event without
    its timestamp or with non-object data, a bad part in a batch, an id that is not a UUID) reaches no
    socket; the well-formed event after them does."""
    _, two, _ = buses
    user = uuid.uuid4()
    got: list[Event] = []
    hub = Hub()
    hub.subscribe_user(user, got.append)
    two.start(hub)
    await asyncio.wait_for(two.connected.wait(), 10)
    good = make_event("booking.created", {"n": 1}).wire()
    hostile = [
        "not json",
        json.dumps({"user": str(user), "event": good}),  # no origin
        json.dumps({"origin": "x", "user": str(user), "event": {"event": "e", "data": {}}}),
        json.dumps({"origin": "x", "user": str(user), "event": {**good, "data": [1]}}),
        json.dumps({"origin": "x", "user": str(user), "event": {**good, "event": 7}}),
        json.dumps({"origin": "x", "user": "not-a-uuid", "event": good}),
        json.dumps({"origin": "x", "batch": [{"user": str(user)}]}),
        "[1, 2]",
    ]
    raw = Redis.from_url(redis_url)
    try:
        for message in hostile:
            await raw.publish(two.channel, message)
        await raw.publish(two.channel, json.dumps({"origin": "x", "user": str(user), "event": good}))

        async def delivered() -> bool:
            return bool(got)

        await wait_for(delivered, within=5, what="the well-formed event")
    finally:
        await raw.aclose()
    assert [(e.name, dict(e.data)) for e in got] == [("booking.created", {"n": 1})]
