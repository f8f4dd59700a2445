"""The request-path Redis gate and the rate limiter's behaviour while Redis is down (docs/FAULTS.md).

Unit tests with a fake clock, one against an address that refuses connections, one with a private
redis-server. The end-to-end
proof with real processes and a real stopped or frozen redis-server is tests/e2e/test_faults_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.domain.errors import RateLimited
from actors.hub import make_event
from actors.reminders import Plan, Reminders
from server.bus.events import EventBus
from server.bus.ratelimit import LocalWindows, RateLimiter
from server.bus.redisconf import retry_once
from server.bus.redisgate import GatedKick, RedisDown, RedisGate
from server.worker.broker import DirectEnqueue
from tests.private_redis import REDIS_SERVER, PrivateRedis
from tests.support import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """A stand-in Redis command that fails or answers as told, counting how often it was made."""

    def __init__(self) -> None:
        self.made = 0
        self.fail = False
        self.hang = False

    async def __call__(self) -> str:
        self.made += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise RedisConnectionError("refused")
        return "ok"


async def test_a_failure_opens_the_gate_for_the_pause_then_one_call_probes() -> None:
    clock, command = Clock(), Calls()
    gate = RedisGate(timeout=0.5, pause=1.0, clock=clock)
    assert await gate.call(command, "x") == "ok"
    command.fail = True
    with pytest.raises(RedisDown):
        await gate.call(command, "x")
    assert gate.down
    for _ in range(5):  # skipped without a call while the pause lasts
        with pytest.raises(RedisDown):
            await gate.call(command, "x")
    assert (command.made, gate.skipped) == (2, 5)
    clock.now += 1.0
    command.fail = False
    assert await gate.call(command, "x") == "ok"  # the probe answers: the gate closes
    assert not gate.down
    assert command.made == 3


async def test_while_a_probe_is_in_flight_other_calls_skip() -> None:
    clock, command = Clock(), Calls()
    gate = RedisGate(timeout=5.0, pause=1.0, clock=clock)
    command.fail = True
    with pytest.raises(RedisDown):
        await gate.call(command, "x")
    clock.now += 1.0
    command.fail, command.hang = False, True
    probe = asyncio.create_task(gate.call(command, "x"))

    async def probing() -> bool:
        return command.made == 2

    await wait_for(probing, within=2, interval=0.001, what="the probe in flight")
    with pytest.raises(RedisDown):
        await gate.call(command, "x")
    assert command.made == 2  # the probe only
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe


async def test_a_hanging_call_is_cut_at_the_timeout_and_opens_the_gate() -> None:
    command = Calls()
    command.hang = True
    gate = RedisGate(timeout=0.05, pause=1.0)
    started = time.monotonic()
    with pytest.raises(RedisDown):
        await gate.call(command, "x")
    assert time.monotonic() - started < 1.0
    assert gate.down


async def test_answered_closes_the_gate_before_the_pause_ends() -> None:
    clock, command = Clock(), Calls()
    gate = RedisGate(timeout=0.5, pause=10.0, clock=clock)
    command.fail = True
    with pytest.raises(RedisDown):
        await gate.call(command, "x")
    command.fail = False
    gate.answered()  # e.g. the event listener subscribed again
    assert await gate.call(command, "x") == "ok"


def test_local_windows_count_per_key_and_reopen_after_the_window() -> None:
    clock = Clock()
    windows = LocalWindows(clock=clock)
    assert windows.hit("a", 60) == (1, 60_000)
    clock.now += 10
    assert windows.hit("a", 60) == (2, 50_000)
    assert windows.hit("b", 60)[0] == 1
    clock.now += 50
    assert windows.hit("a", 60)[0] == 1


def test_local_windows_stay_bounded_under_a_flood_of_keys() -> None:
    clock = Clock()
    windows = LocalWindows(max_keys=100, clock=clock)
    for n in range(1000):
        windows.hit(f"k{n}", 60)
    assert len(windows) <= 100


@pytest.fixture
async def dead_redis() -> Any:
    """A Redis client for an address nothing listens on: every call is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    yield client
    await client.aclose()


async def test_with_redis_down_the_api_limit_fails_open_and_login_limits_count_locally(
    dead_redis: Redis,
) -> None:
    limiter = RateLimiter(dead_redis, prefix="t:", gate=RedisGate(timeout=0.5, pause=1.0))
    for _ in range(10):  # never a 503 and never a 429: the per-user API limit lets calls through
        await limiter.hit("api-user", "u1", limit=2, window=60, when_down="open")
    for _ in range(3):
        await limiter.hit("login-email", "a@example.com", limit=3, window=60, when_down="local")
    with pytest.raises(RateLimited) as refused:
        await limiter.hit("login-email", "a@example.com", limit=3, window=60, when_down="local")
    assert 59 <= refused.value.retry_after <= 60
    await limiter.hit("login-email", "b@example.com", limit=3, window=60, when_down="local")


@pytest.mark.skipif(REDIS_SERVER is None, reason="needs a redis-server binary")
async def test_clients_survive_a_redis_restart_and_do_not_retry_a_timeout(tmp_path: Path) -> None:
    """redisconf.retry_once(): the first command after a restart succeeds on a new connection (a dead
    pooled one failed it before), and a frozen Redis costs one timeout, not two."""
    server = PrivateRedis(tmp_path)
    await asyncio.to_thread(server.start)
    client = Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3, retry=retry_once())
    try:
        await asyncio.gather(*(client.ping() for _ in range(3)))  # three pooled connections
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        for _ in range(3):
            assert await client.ping()
        server.hang()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        assert time.monotonic() - started < 0.55
    finally:
        await asyncio.to_thread(server.stop)
        await client.aclose()


async def test_emit_says_whether_a_listener_received_the_event(redis_url: str) -> None:
    """The reminder outbox marks a notification published only when emit says so: a publish nobody
    subscribes to (listeners not back yet after a Redis restart), a publish skipped by an open gate, or
    one refused by a dead Redis, must report False."""
    live = Redis.from_url(redis_url)
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    bus = EventBus(live, prefix=f"t{uuid.uuid4().hex[:8]}:")
    pubsub = live.pubsub(ignore_subscribe_messages=True)
    try:
        user, event = uuid.uuid4(), make_event("booking.deleted", {"id": "x"})
        assert not await bus.emit(user, event)  # Redis answered, but no web process listens
        await pubsub.subscribe(bus.channel)
        assert await bus.emit(user, event)
        assert not await EventBus(dead, prefix="t:").emit(user, event)
        clock = Clock()
        gate = RedisGate(timeout=0.5, pause=60.0, clock=clock)
        gated = EventBus(dead, prefix="t:", gate=gate)
        assert not await gated.emit(user, event)  # fails: the gate opens
        assert gate.down
        assert not await gated.emit(user, event)  # skipped while it is open
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await live.aclose()
        await dead.aclose()


class RefusingKick:
    """A reminder fast path whose Redis refuses every call."""

    def __init__(self) -> None:
        self.calls = 0

    def is_due(self, due_at: datetime, now: datetime | None = None) -> bool:
        return DirectEnqueue.is_due(due_at, now)

    async def enqueue(self, booking_id: uuid.UUID, due_at: datetime) -> None:
        self.calls += 1
        raise RedisConnectionError("refused")


async def test_an_outage_is_one_warning_not_one_per_booking(caplog: pytest.LogCaptureFixture) -> None:
    """The gate warns when Redis fails; each already-due reminder committed meanwhile is logged at INFO
    only (it was one WARNING per create and per delete, a flood under load while Redis was down). A
    reminder due later, or a cancelled one, makes no Redis call at all."""
    kick = RefusingKick()
    reminders = Reminders(GatedKick(kick, RedisGate(timeout=0.5, pause=60.0)))
    later = datetime.now(UTC) + timedelta(hours=1)
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            await reminders.after_commit(Plan(uuid.uuid4(), datetime.now(UTC), fresh=True))
            await reminders.after_commit(Plan(uuid.uuid4(), later, fresh=True))
            await reminders.after_commit(Plan(uuid.uuid4(), None))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Redis failed during reminder enqueue" in warnings[0], warnings
    assert kick.calls == 1  # the rest were skipped by the open gate
    assert sum("the scheduler will" in r.getMessage() for r in caplog.records) == 5
