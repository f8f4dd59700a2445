"""Test helpers that talk to real PostgreSQL and Redis (no mocks)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(_asyncpg_url(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_url(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def wait_for(
    predicate: Callable[[], Awaitable[Any]],
    *,
    within: float = 5.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until `predicate()` returns something truthy; fail with `what` after `within` seconds.

    The limit is an `asyncio.timeout`: it also cuts a predicate that hangs, and it nests inside a
    caller's own `asyncio.timeout` (whichever ends first wins)."""
    limit = asyncio.timeout(within)
    try:
        async with limit:
            # A poll: what it waits for is outside this loop (another process, a server), with no event
            # to wait on; callers with an event await it instead.
            while not (value := await predicate()):  # noqa: ASYNC110
                await asyncio.sleep(interval)
            return value
    except TimeoutError:
        if not limit.expired():
            raise  # the predicate's own (an HTTP client's, say), not this wait's
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


def off_the_loop(what: str) -> None:
    """Blocking helpers (process start-up, servers stopped and started, polls with `time.sleep`) call
    this first: on a thread that runs an event loop they would stall every task on it (the test's
    servers, sockets and timers), so async code hands them to `asyncio.to_thread`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AssertionError(f"{what} blocks: from async code call it through asyncio.to_thread")


async def all_exited(pids: Iterable[int], *, within: float, what: str = "the processes to exit") -> None:
    """Wait until every process in `pids` has exited; one that exited but is not reaped yet (a zombie:
    a re-parented grandchild waits for init) counts as exited. On Linux the kernel says when (a pidfd
    turns readable as its process exits), so nothing polls; elsewhere psutil is polled."""
    wanted = sorted(set(pids))
    loop = asyncio.get_running_loop()
    exits: dict[int, asyncio.Future[None]] = {}
    fds: list[int] = []
    try:
        for pid in wanted:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # exited and reaped already
            except (AttributeError, OSError):  # no pidfd here (not Linux, or a sandbox refuses it)
                await _poll_exited(wanted, within=within, what=what)
                return
            fds.append(fd)
            exited = exits[pid] = loop.create_future()
            loop.add_reader(fd, _resolve, exited)
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*exits.values())
        except TimeoutError:
            # gather cancelled the futures still waiting: those are the processes still running.
            left = [pid for pid, exited in exits.items() if exited.cancelled() or not exited.done()]
            raise AssertionError(f"timed out after {within}s waiting for {what}: {left} running") from None
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _poll_exited(pids: list[int], *, within: float, what: str) -> None:
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    left = set(pids)

    async def none_left() -> bool:
        left.intersection_update(await asyncio.to_thread(lambda: {pid for pid in left if running(pid)}))
        return not left

    await wait_for(none_left, within=within, interval=0.05, what=f"{what} (of {sorted(left)})")
