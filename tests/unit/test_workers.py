"""The worker's and scheduler's shutdown (no I/O; the processes are tested in
tests/e2e/test_reminders_e2e.py, SIGTERM with exit code 0)."""

from __future__ import annotations

import asyncio
import time

import pytest
from taskiq import TaskiqEvents, TaskiqState

from server.base.settings import Settings
from server.worker.broker import make_broker
from server.worker.tasks import register
from server.worker.workers import finish, run_until_stopped


async def test_a_failing_or_hanging_shutdown_step_is_logged_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def fails() -> None:
        ran.append("fails")
        raise ConnectionError("Redis is gone")

    async def closes() -> None:
        ran.append("closes")

    async def hangs() -> None:
        ran.append("hangs")
        await asyncio.Event().wait()

    started = time.monotonic()
    await finish([fails, closes, hangs, closes], grace=0.2, what="worker")
    assert time.monotonic() - started < 1.0
    assert ran == ["fails", "closes", "hangs"]  # a failure does not skip the next step; the grace ends it
    messages = [r.getMessage() for r in caplog.records]
    assert "worker: a shutdown step failed" in messages
    assert "worker: shutdown did not finish within 0.2s; exiting anyway" in messages


async def test_the_worker_closes_redis_even_when_the_database_pool_fails_to_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker(Settings())
    register(broker, Settings())
    closed: list[str] = []

    class Pool:
        async def close(self) -> None:
            raise ConnectionError("the pool is gone")

    class Client:
        async def aclose(self) -> None:
            closed.append("redis")

    state = TaskiqState()
    state.db, state.redis = Pool(), Client()
    (shutdown,) = broker.event_handlers[TaskiqEvents.WORKER_SHUTDOWN]
    await shutdown(state)  # logged, not raised: the broker's own pool disconnects after this handler
    assert closed == ["redis"]
    assert "worker: the database pool did not close" in caplog.messages


async def test_a_loop_that_crashes_exits_non_zero_and_a_stop_exits_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver or scheduler loop that dies by itself was logged and then exited 0, which a
    supervisor restarting on failure (systemd, Kubernetes) reads as a clean stop."""

    async def crashes() -> None:
        raise RuntimeError("the receiver died")

    async def runs() -> None:
        await asyncio.Event().wait()

    assert await run_until_stopped(asyncio.Event(), [crashes(), runs()], grace=0.5, what="worker") == 1
    assert "worker stopped unexpectedly" in caplog.messages

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await run_until_stopped(stop, [runs(), runs()], grace=0.5, what="worker") == 0
