"""EventBus signals between processes, and the reconnect hook, on a real Redis.

Two buses on one prefix stand for two processes. The reconnect test kills only its own bus's pub/sub
connection (found by client name), so other tests sharing the Redis are untouched. It runs twice: with
a client that does not retry (the listener's own loop subscribes again) and with the processes' client
options (server/bus/redisconf.py), where redis-py reconnects and re-subscribes inside its retry, unseen.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from actors.hub import Hub
from server.base.settings import Settings
from server.bus.events import EventBus
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
