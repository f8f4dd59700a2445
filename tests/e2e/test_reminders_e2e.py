"""Reminders end to end: real `booking worker` and `booking scheduler` processes on real Redis and
PostgreSQL. Bookings are made through the real app (in-process) sharing the processes' key prefix; the
`booking.reminder` event is read from the Redis events channel every web process listens to. One test
runs a real `booking serve` too and reads the reminder where a user sees it: on their WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from server.base.settings import Settings
from server.web.keys import DB
from storage import reminders as store
from storage.db import Database
from tests.conftest import Client, Registrar, auth
from tests.integration.test_reminders import deliver_unpublished
from tests.private_redis import PrivateRedis
from tests.processes import start_web, stop
from tests.support import off_the_loop, unique_email, wait_for
from tests.ws_support import ask, events_until_pong, next_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

BIN = Path(sys.executable).parent / "booking"
LATENESS: list[float] = []


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._file = self.log.open("wb")
        self.popen = subprocess.Popen(
            [str(BIN), *args], env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 8.0) -> float:
        """Signal and wait; SIGKILL after `timeout`. Returns how long it took to exit. It waits, so
        async code calls it through `asyncio.to_thread`."""
        off_the_loop("Proc.stop")
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._file.close()
        return time.monotonic() - started


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    yield from process_starter(settings, tmp_path)


def process_starter(settings: Settings, tmp_path: Path, **extra: str) -> Iterator[Callable[..., Proc]]:
    """A `start(name, args, **env)` for `booking` processes on the test session's database and Redis
    prefix (a fixture's body: every one started is stopped at the end)."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_prefix,
        "NODE_ENV": "test",
        "DB_POOL_SIZE": "3",
        **extra,
    }
    started: list[Proc] = []

    def start(name: str, args: list[str], **overrides: str) -> Proc:
        proc = Proc(f"{name}{len(started)}", args, {**env, **overrides}, tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL if proc.popen.poll() is None else signal.SIGTERM, timeout=5)


async def ready(proc: Proc, marker: str) -> None:
    async def seen() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.text()}"
        return marker in proc.text()

    await wait_for(seen, within=10, what=f"{proc.name} ready")


def start_worker(start: Callable[..., Proc], **env: str) -> Proc:
    return start("worker", ["worker", "--grace", "3"], **{k.upper(): v for k, v in env.items()})


def start_scheduler(start: Callable[..., Proc], **env: str) -> Proc:
    args = ["scheduler", "--update-interval", "1", "--reconcile-interval", "1"]
    return start("scheduler", args, **{k.upper(): v for k, v in env.items()})


@pytest.fixture
async def events(client: Client, settings: Settings, redis_url: str) -> AsyncIterator[PubSub]:
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{settings.redis_prefix}events")
    yield pubsub
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await redis.aclose()


async def book(
    client: Client, user: dict[str, Any], *, seconds: float, minutes: int | None = 0
) -> dict[str, Any]:
    """A 0.2 s booking starting in `seconds` (short, so one user's bookings can start 0.3 s apart)."""
    start = datetime.now(UTC) + timedelta(seconds=seconds)
    body = {
        "title": "Standup",
        "startTime": start.isoformat(),
        "endTime": (start + timedelta(seconds=0.2)).isoformat(),
        "reminderMinutesBefore": minutes,
    }
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def reminders_seen(
    pubsub: PubSub, user: dict[str, Any], *, until: float, expect: int | None = None, settle: float = 2.0
) -> list[tuple[dict[str, Any], datetime]]:
    """`booking.reminder` events for `user` with their arrival times: returns `settle` seconds after the
    `expect`-th (so a duplicate would still be caught), or at the deadline `until` (monotonic).
    (The processes serve the whole session database, so other tests' reminders may pass by.)"""
    seen: list[tuple[dict[str, Any], datetime]] = []
    while time.monotonic() < until:
        message = await pubsub.get_message(timeout=min(0.2, max(0.01, until - time.monotonic())))
        if message is None:
            continue
        message = json.loads(message["data"])
        # One event, or several in one message (coalesced by the publishing process).
        for envelope in message.get("batch", [message]):
            if (
                envelope.get("user") == user["user"]["id"]
                and envelope["event"]["event"] == "booking.reminder"
            ):
                seen.append((envelope, datetime.now(UTC)))
                if expect is not None and len(seen) == expect:
                    until = min(until, time.monotonic() + settle)
    return seen


def lateness(envelope: dict[str, Any], arrived: datetime) -> float:
    due = datetime.fromisoformat(envelope["event"]["data"]["dueAt"].replace("Z", "+00:00"))
    late = (arrived - due).total_seconds()
    LATENESS.append(late)
    print(f"reminder {envelope['event']['data']['bookingId']} arrived {late:+.3f}s after due")  # noqa: T201
    return late


async def reminder_stack(processes: Callable[..., Proc]) -> tuple[Proc, Proc]:
    """A reminder worker and a scheduler, both ready."""
    worker, scheduler = start_worker(processes), start_scheduler(processes)
    await ready(worker, "reminder worker ready")
    await ready(scheduler, "reminder scheduler ready")
    return worker, scheduler


async def each_reminded_once(
    db: Database, user: dict[str, Any], seen: list[tuple[dict[str, Any], datetime]], ids: list[str]
) -> None:
    """Every booking of `ids` reminded exactly once: one event and one notification row each. Their
    lateness is printed and collected for the session's summary, not asserted."""
    assert sorted(e["event"]["data"]["bookingId"] for e, _ in seen) == sorted(ids)
    for envelope, arrived in seen:
        lateness(envelope, arrived)
    assert await notifications(db, user) == len(ids)


async def notifications(db: Database, user: dict[str, Any]) -> int:
    async with db.connect() as conn:
        _, total = await store.list_notifications(
            conn, user_id=uuid.UUID(user["user"]["id"]), unread=None, offset=0, limit=1
        )
    return total


async def in_flight(redis_url: str, settings: Settings) -> None:
    """Until a reminder message is delivered to a worker and not yet acknowledged (XPENDING)."""
    redis = Redis.from_url(redis_url)
    try:

        async def pending() -> bool:
            try:
                info = await redis.xpending(
                    f"{settings.redis_prefix}taskiq:stream", f"{settings.redis_prefix}taskiq:workers"
                )
            except Exception:  # no stream or group yet
                return False
            return bool(info["pending"])

        await wait_for(pending, within=8, interval=0.02, what="the reminder in flight")
    finally:
        await redis.aclose()


async def test_reminder_arrives_at_its_due_time_once_and_moves_and_cancels(
    client: Client, register: Registrar, processes: Callable[..., Proc], events: PubSub
) -> None:
    worker, scheduler = await reminder_stack(processes)
    user = await register()
    db = client.app[DB]

    on_time = await book(client, user, seconds=4)
    moved = await book(client, user, seconds=3.5, minutes=0)
    cancelled = await book(client, user, seconds=3)
    deleted = await book(client, user, seconds=3.2)
    new_start = datetime.fromisoformat(moved["startTime"].replace("Z", "+00:00")) + timedelta(seconds=3)
    resp = await client.patch(
        f"/api/booking/{moved['id']}",
        json={
            "startTime": new_start.isoformat(),
            "endTime": (new_start + timedelta(seconds=0.2)).isoformat(),
        },
        headers=auth(user),
    )
    assert resp.status == 200, await resp.text()
    resp = await client.patch(
        f"/api/booking/{cancelled['id']}/status", json={"status": "cancelled"}, headers=auth(user)
    )
    assert resp.status == 200
    assert (await client.delete(f"/api/booking/{deleted['id']}", headers=auth(user))).status == 204

    seen = await reminders_seen(events, user, until=time.monotonic() + 11, expect=2)
    by_booking = {e["event"]["data"]["bookingId"]: (e, at) for e, at in seen}
    assert sorted(by_booking) == sorted([on_time["id"], moved["id"]]), seen
    assert len(seen) == 2
    for envelope, arrived in by_booking.values():
        assert envelope["user"] == user["user"]["id"]
        assert -0.05 < lateness(envelope, arrived) < 3.0
    moved_due = by_booking[moved["id"]][0]["event"]["data"]["dueAt"]
    assert datetime.fromisoformat(moved_due.replace("Z", "+00:00")) == new_start  # the new time only
    assert await notifications(db, user) == 2

    resp = await client.get("/api/notifications", headers=auth(user))
    assert {n["data"]["bookingId"] for n in (await resp.json())["data"]} == {on_time["id"], moved["id"]}

    # SIGTERM: both stop well within their grace, and say so with exit code 0 (a supervisor reads a
    # non-zero code as a crash and may restart or page).
    for proc in (worker, scheduler):
        took = await asyncio.to_thread(proc.stop, signal.SIGTERM)
        assert took < 6.0, proc.text()
        assert proc.popen.returncode == 0, (proc.name, proc.popen.returncode, proc.text())
        assert "WARNING" not in proc.text(), proc.text()  # a clean stop says nothing alarming
        print(f"{proc.name} stopped on SIGTERM in {took:.2f}s, exit code 0")  # noqa: T201


async def test_a_reminder_already_due_goes_straight_to_a_worker_without_waiting_for_the_scheduler(
    client: Client, register: Registrar, processes: Callable[..., Proc], events: PubSub
) -> None:
    """SPEC §9's "send at once": a booking whose reminder time has passed at creation (or an edit that
    makes it due now) is put on the stream by the web process itself, not left for the scheduler's next
    read of the schedule (which made it 1-2 s late). No scheduler runs here, so only that path delivers."""
    worker = start_worker(processes)
    await ready(worker, "reminder worker ready")
    user = await register()

    created_due = await book(client, user, seconds=120, minutes=10)
    later = await book(client, user, seconds=3600, minutes=10)
    resp = await client.patch(
        f"/api/booking/{later['id']}", json={"reminderMinutesBefore": 120}, headers=auth(user)
    )
    assert resp.status == 200, await resp.text()

    seen = await reminders_seen(events, user, until=time.monotonic() + 10, expect=2)
    reminded = sorted(e["event"]["data"]["bookingId"] for e, _ in seen)
    assert reminded == sorted([created_due["id"], later["id"]])
    assert await notifications(client.app[DB], user) == 2
    for envelope, arrived in seen:
        lateness(envelope, arrived)  # printed and collected for the session's summary, not asserted


async def test_two_schedulers_send_each_reminder_once(
    client: Client, register: Registrar, processes: Callable[..., Proc], events: PubSub
) -> None:
    procs = [start_worker(processes), start_scheduler(processes), start_scheduler(processes)]
    for proc, marker in zip(procs, ["worker ready", "scheduler ready", "scheduler ready"], strict=True):
        await ready(proc, marker)
    user = await register()
    booked = [await book(client, user, seconds=3 + i * 0.7) for i in range(4)]

    seen = await reminders_seen(events, user, until=time.monotonic() + 9, expect=4)
    await each_reminded_once(client.app[DB], user, seen, [b["id"] for b in booked])


async def test_redis_flushed_after_commit_still_delivers_once(
    client: Client,
    register: Registrar,
    processes: Callable[..., Proc],
    events: PubSub,
    settings: Settings,
    redis_url: str,
) -> None:
    _worker, _scheduler = await reminder_stack(processes)
    user = await register()
    booked = [await book(client, user, seconds=4), await book(client, user, seconds=4.5)]

    # The shared test Redis serves other runs: "flush" every key of this run's prefix (the schedules,
    # the stream, its consumer group, the claims), which is what FLUSHDB does to this deployment.
    redis = Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"*{settings.redis_prefix}*")]
        assert keys
        await redis.delete(*keys)
    finally:
        await redis.aclose()

    seen = await reminders_seen(events, user, until=time.monotonic() + 12, expect=2)
    await each_reminded_once(client.app[DB], user, seen, [b["id"] for b in booked])


async def test_worker_killed_mid_delivery_delivers_once_after_a_new_worker_starts(
    client: Client,
    register: Registrar,
    processes: Callable[..., Proc],
    events: PubSub,
    settings: Settings,
    redis_url: str,
) -> None:
    worker, _scheduler = await reminder_stack(processes)
    user = await register()
    booking = await book(client, user, seconds=4)

    # The schedule fires one second early and the task waits for the due time: the message is then
    # delivered to the worker and not yet acknowledged. Kill the worker right there.
    await in_flight(redis_url, settings)
    await asyncio.to_thread(worker.stop, signal.SIGKILL)
    assert await notifications(client.app[DB], user) == 0
    assert await reminders_seen(events, user, until=time.monotonic() + 1.5) == []

    replacement = start_worker(processes)
    await ready(replacement, "reminder worker ready")
    seen = await reminders_seen(events, user, until=time.monotonic() + 10, expect=1)
    assert [e["event"]["data"]["bookingId"] for e, _ in seen] == [booking["id"]]
    assert await notifications(client.app[DB], user) == 1
    due = datetime.fromisoformat(seen[0][0]["event"]["data"]["dueAt"].replace("Z", "+00:00"))
    print(f"after SIGKILL: delivered {(seen[0][1] - due).total_seconds():.3f}s after due")  # noqa: T201


async def test_a_reminder_committed_but_never_published_is_published_once_by_the_scheduler(
    client: Client, register: Registrar, processes: Callable[..., Proc], events: PubSub, settings: Settings
) -> None:
    """A worker that dies after its commit and before its publish leaves the notification stored and
    the live event unsent (its redelivered message finds the claim taken and sends nothing). That
    state is made here by delivering with a bus whose Redis is unreachable; the real scheduler's outbox
    pass then publishes the event, once."""
    scheduler = start_scheduler(processes)
    await ready(scheduler, "reminder scheduler ready")
    user = await register()
    booking = await book(client, user, seconds=120, minutes=60)  # due already: the worker's job
    async with client.app[DB].connect() as conn:
        row = await store.get_reminder(conn, uuid.UUID(booking["id"]))
    assert row is not None
    outcome = await deliver_unpublished(client.app[DB], settings, row)
    assert outcome.status == "sent"
    committed, committed_at = time.monotonic(), datetime.now(UTC)

    seen = await reminders_seen(events, user, until=committed + 12, expect=1, settle=3.0)
    assert [e["event"]["data"]["notificationId"] for e, _ in seen] == [str(outcome.notification_id)]
    assert seen[0][0]["event"]["data"]["bookingId"] == booking["id"]
    assert await notifications(client.app[DB], user) == 1
    print(f"outbox: published {(seen[0][1] - committed_at).total_seconds():.1f}s after the commit")  # noqa: T201


async def test_a_reminder_arrives_on_the_users_socket_on_a_real_web_process(
    settings: Settings, processes: Callable[..., Proc]
) -> None:
    """The whole path, every piece a real process: a booking made over REST on `booking serve`, its
    reminder fired by `booking scheduler`, delivered by `booking worker`, published on Redis, and
    pushed by the web process to the user's WebSocket as a `booking.reminder` frame."""
    worker, scheduler = start_worker(processes), start_scheduler(processes)
    env = {
        "NODE_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_prefix,
        "API_RATE_LIMIT_PER_USER": "100000",
    }
    procs = await asyncio.to_thread(start_web, 1, env)
    try:
        web = procs[0]
        await ready(worker, "reminder worker ready")
        await ready(scheduler, "reminder scheduler ready")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            body = {"email": unique_email(), "password": "correct horse battery", "name": "R"}
            async with http.post(f"{web.base_url}/api/auth/register", json=body) as resp:
                assert resp.status == 201, await resp.text()
                user = await resp.json()
            ws = await http.ws_connect(web.base_url.replace("http://", "ws://") + "/ws/", headers=auth(user))
            await ask(ws, "ping")
            start = datetime.now(UTC) + timedelta(seconds=3)
            booking_body = {
                "title": "Standup on the socket",
                "startTime": start.isoformat(),
                "endTime": (start + timedelta(seconds=0.2)).isoformat(),
                "reminderMinutesBefore": 0,
            }
            async with http.post(
                f"{web.base_url}/api/booking", json=booking_body, headers=auth(user)
            ) as resp:
                assert resp.status == 201, await resp.text()
                booking = await resp.json()
            frames = [await next_frame(ws)]
            while frames[-1]["event"] != "booking.reminder":
                frames.append(await next_frame(ws, within=10))
            arrived = datetime.now(UTC)
            assert [f["event"] for f in frames] == ["booking.created", "booking.reminder"]
            reminder = frames[-1]["data"]
            assert reminder["bookingId"] == booking["id"]
            assert reminder["booking"]["reminderSentAt"] is not None
            due = datetime.fromisoformat(reminder["dueAt"].replace("Z", "+00:00"))
            late = (arrived - due).total_seconds()
            LATENESS.append(late)
            print(f"\nreminder on a real socket: {late:+.3f}s after due")  # noqa: T201
            assert -0.05 < late < 3.0
            assert await events_until_pong(ws) == []  # once
            await ws.close()

            async def scraped() -> str:
                async with http.get(f"{web.base_url}/metrics") as resp:
                    return await resp.text()

            async def counted() -> bool:
                # The worker counts a send in Redis just after it publishes the event: the socket can
                # see the reminder a moment before the scrape sees the count.
                return bool(re.search(r"^reminders_sent_total [1-9]", await scraped(), flags=re.MULTILINE))

            await wait_for(counted, within=5, what="reminders_sent_total counted on /metrics")
            assert "reminders_scheduled_total 1.0" in await scraped()  # this process's one booking
    finally:
        exits = await asyncio.to_thread(stop, procs)
    assert exits[0].code == 0, exits[0].output


async def test_sigterm_mid_delivery_and_while_redis_is_down_exits_0_and_loses_nothing(
    client: Client,
    register: Registrar,
    processes: Callable[..., Proc],
    events: PubSub,
    settings: Settings,
    redis_url: str,
    private_redis: PrivateRedis,
) -> None:
    """SIGTERM is a normal stop whatever the worker is doing: exit code 0 within the grace, with a
    reminder in flight (it is delivered once, by this worker or after it), and with Redis unreachable."""
    worker, _scheduler = await reminder_stack(processes)
    user = await register()
    booking = await book(client, user, seconds=4)
    await in_flight(redis_url, settings)
    took = await asyncio.to_thread(worker.stop, signal.SIGTERM)
    assert worker.popen.returncode == 0, (worker.popen.returncode, worker.text())
    assert took < 4.0, worker.text()  # --grace 3
    print(f"\nworker stopped mid-delivery in {took:.2f}s, exit code 0")  # noqa: T201
    replacement = start_worker(processes)
    await ready(replacement, "reminder worker ready")
    seen = await reminders_seen(events, user, until=time.monotonic() + 10, expect=1)
    assert [e["event"]["data"]["bookingId"] for e, _ in seen] == [booking["id"]]
    assert await notifications(client.app[DB], user) == 1

    # Redis gone: a worker and a scheduler retrying their connections still stop at once, with 0.
    offline = [
        start_worker(processes, redis_url=private_redis.url),
        start_scheduler(processes, redis_url=private_redis.url),
    ]
    for proc in offline:
        await ready(proc, "ready")
    await asyncio.to_thread(private_redis.stop)
    for proc in offline:
        took = await asyncio.to_thread(proc.stop, signal.SIGTERM)
        assert proc.popen.returncode == 0, (proc.name, proc.popen.returncode, proc.text())
        assert took < 4.0, proc.text()
        print(f"{proc.name} stopped with Redis down in {took:.2f}s, exit code 0")  # noqa: T201


@pytest.fixture(scope="module", autouse=True)
def report_lateness() -> Iterator[None]:
    yield
    if LATENESS:
        ordered = sorted(LATENESS)
        print(  # noqa: T201
            f"\nreminder lateness over {len(ordered)}: min {ordered[0]:.3f}s, "
            f"median {ordered[len(ordered) // 2]:.3f}s, max {ordered[-1]:.3f}s"
        )


async def test_booking_committed_while_redis_is_down_and_a_flush_are_both_reminded_once(
    make_client: Callable[..., Any],
    settings: Settings,
    private_redis: PrivateRedis,
    processes: Callable[..., Proc],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_server = private_redis
    client: Client = await make_client(redis_url=redis_server.url, db_timeout=0.5)
    monkeypatch.setitem(os.environ, "REDIS_URL", redis_server.url)
    worker = start_worker(processes, redis_url=redis_server.url)
    scheduler = start_scheduler(processes, redis_url=redis_server.url)
    await ready(worker, "reminder worker ready")
    await ready(scheduler, "reminder scheduler ready")
    resp = await client.post(
        "/api/auth/register",
        json={
            "email": f"down-{uuid.uuid4().hex[:8]}@example.com",
            "password": "correct horse",
            "name": "D",
        },
    )
    session = await resp.json()
    db = client.app[DB]

    await asyncio.to_thread(redis_server.stop)
    # Through the API, as a client would: with Redis down the create still commits (201).
    down_id = (await book(client, session, seconds=5))["id"]
    await asyncio.to_thread(redis_server.start)  # back, and empty: nothing of the schedule survived
    flushed = await book(client, session, seconds=6)
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.flushdb()
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(f"{settings.redis_prefix}events")
        seen = await reminders_seen(pubsub, session, until=time.monotonic() + 12, expect=2)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await redis.aclose()
    await each_reminded_once(db, session, seen, [down_id, flushed["id"]])


async def test_each_occurrence_of_a_series_has_its_own_reminder_sent_once(
    client: Client, register: Registrar, processes: Callable[..., Proc], events: PubSub
) -> None:
    """A daily series whose first occurrence starts in a few seconds: that occurrence is reminded once,
    on time; the next ones keep their own pending reminders at their own starts; deleting one occurrence
    (scope=this) removes only its reminder."""
    _worker, _scheduler = await reminder_stack(processes)
    user = await register()
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    body = {
        "title": "Daily",
        "startTime": start.isoformat(),
        "endTime": (start + timedelta(minutes=15)).isoformat(),
        "reminderMinutesBefore": 0,
        "recurrence": {"rrule": "FREQ=DAILY;COUNT=3", "timeZone": "Europe/Berlin"},
    }
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 201, await resp.text()
    first, second, third = (await resp.json())["occurrences"]
    assert (await client.delete(f"/api/booking/{second['id']}", headers=auth(user))).status == 204

    seen = await reminders_seen(events, user, until=time.monotonic() + 12, expect=1)
    assert [e["event"]["data"]["bookingId"] for e, _ in seen] == [first["id"]]
    assert -0.05 < lateness(*seen[0]) < 3.0
    async with client.app[DB].connect() as conn:
        rows = await conn.fetch(
            "SELECT booking_id, state, due_at FROM reminders WHERE booking_id = ANY($1::uuid[])",
            [uuid.UUID(o["id"]) for o in (first, second, third)],
        )
    states = {str(r["booking_id"]): (r["state"], r["due_at"]) for r in rows}
    assert set(states) == {first["id"], third["id"]}
    assert states[first["id"]][0] == "sent"
    third_start = datetime.fromisoformat(third["startTime"].replace("Z", "+00:00"))
    assert states[third["id"]] == ("pending", third_start)
    assert await notifications(client.app[DB], user) == 1
