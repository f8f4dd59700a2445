"""Webhooks end to end: real `booking worker` and `booking scheduler` processes on real Redis and
PostgreSQL deliver to a real aiohttp receiver on 127.0.0.1; every request is checked with the
standardwebhooks library's own `Webhook(secret).verify`. Bookings are changed through the real app
(in-process) sharing the processes' Redis key prefix, so its hand-off reaches their stream.

A receiver dedupes by `webhook-id` (the spec's contract): "exactly-once effect" is one webhook-id per
(event, endpoint), delivered (marked so in PostgreSQL) exactly once, whatever is killed or flushed.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from server.base.settings import Settings
from server.web.keys import DB
from storage import webhook_log as log_store
from storage import webhook_outbox as store
from storage.db import Database
from tests.conftest import Client, Registrar, auth
from tests.e2e.test_reminders_e2e import Proc, process_starter, ready
from tests.private_redis import PrivateRedis
from tests.support import wait_for
from tests.webhook_support import Receiver, add_endpoint, running_receiver
from tests.ws_support import booking_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# Fast retries and a short timeout, so a test sees a whole schedule in seconds (docs/WEBHOOKS.md).
WEBHOOK_ENV = {
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WEBHOOK_POLL_SECONDS": "0.2",
    "WEBHOOK_ENDPOINT_CONCURRENCY": "4",
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as recv:
        yield recv


@pytest.fixture(autouse=True)
async def quiet_outbox(client: Client) -> None:
    """The session's database holds other tests' undelivered messages, to receivers long gone whose
    ports a new receiver may reuse: given up before this test's processes start, so they send only
    this test's messages."""
    async with client.app[DB].connect() as conn:
        await conn.execute("UPDATE webhook_messages SET state = 'failed' WHERE state = 'pending'")


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    yield from process_starter(settings, tmp_path, **WEBHOOK_ENV)


async def start_pair(start: Callable[..., Proc], **env: str) -> tuple[Proc, Proc]:
    worker = start("worker", ["worker", "--grace", "2"], **env)
    scheduler = start(
        "scheduler", ["scheduler", "--update-interval", "1", "--reconcile-interval", "1"], **env
    )
    await ready(worker, "reminder worker ready")
    await ready(scheduler, "reminder scheduler ready")
    return worker, scheduler


async def book(client: Client, user: dict[str, Any], hours: float) -> dict[str, Any]:
    resp = await client.post("/api/booking", json=booking_data(hours=hours), headers=auth(user))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def messages(db: Database, endpoint_id: str) -> list[store.Message]:
    async with db.connect() as conn:
        found, _ = await log_store.deliveries(conn, endpoint_id=uuid.UUID(endpoint_id), offset=0, limit=500)
    return sorted((m for m, _ in found), key=lambda m: m.seq)


async def all_delivered(
    db: Database, endpoint_id: str, count: int, *, within: float = 30
) -> list[store.Message]:
    """Wait until the endpoint has `count` messages, every one marked delivered in PostgreSQL (after
    which no attempt can start: a claim refuses a delivered message)."""

    async def done() -> list[store.Message] | None:
        found = await messages(db, endpoint_id)
        return found if len(found) == count and all(m.state == "delivered" for m in found) else None

    result: list[store.Message] = await wait_for(done, within=within, interval=0.1, what=f"{count} delivered")
    return result


def verified(receiver: Receiver, path: str, secret: str) -> list[dict[str, Any]]:
    return [r.verify(secret) for r in receiver.at(path)]


async def test_signed_events_arrive_once_each_in_commit_order_and_a_rollback_sends_nothing(
    client: Client, register: Registrar, processes: Callable[..., Proc], receiver: Receiver
) -> None:
    await start_pair(processes)
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("orders"))
    first, second = await book(client, owner, 50), await book(client, owner, 60)
    for n in range(5):  # quick successive changes of both bookings, interleaved
        for booking in (first, second):
            resp = await client.patch(
                f"/api/booking/{booking['id']}", json={"title": f"v{n}"}, headers=auth(owner)
            )
            assert resp.status == 200
    assert (await client.post("/api/booking", json=booking_data(hours=50), headers=auth(owner))).status == 409
    with pytest.raises(RuntimeError):  # a transaction that wrote a message, rolled back
        async with client.app[DB].begin() as conn:
            await store.enqueue(
                conn,
                event_type="booking.updated",
                user_id=uuid.UUID(owner["user"]["id"]),
                booking_id=uuid.UUID(first["id"]),
                payload={"booking": {"id": first["id"], "title": "rolled back"}},
            )
            raise RuntimeError("rollback")
    resp = await client.patch(
        f"/api/booking/{first['id']}/status", json={"status": "cancelled"}, headers=auth(owner)
    )
    assert resp.status == 200
    assert (await client.delete(f"/api/booking/{second['id']}", headers=auth(owner))).status == 204

    await all_delivered(client.app[DB], endpoint["id"], 14)
    bodies = verified(receiver, "orders", endpoint["secret"])
    assert len(bodies) == 14 == len({r.webhook_id for r in receiver.at("orders")})
    for booking, last in ((first, "booking.cancelled"), (second, "booking.deleted")):
        mine = [b for b in bodies if b["data"]["booking"]["id"] == booking["id"]]
        assert [b["type"] for b in mine] == ["booking.created"] + ["booking.updated"] * 5 + [last]
        assert [b["data"]["booking"]["title"] for b in mine[1:6]] == [f"v{n}" for n in range(5)]
        versions = [b["data"]["booking"]["version"] for b in mine[:6]]
        assert versions == sorted(versions)
    assert "rolled back" not in str(bodies)


async def test_500_three_times_then_200_is_one_success_with_the_attempt_log(
    client: Client, register: Registrar, processes: Callable[..., Proc], receiver: Receiver
) -> None:
    await start_pair(processes)
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("flaky"), ["booking.created"])
    receiver.scripts["flaky"] = [500, 500, 500]
    booking = await book(client, owner, 50)
    [message] = await all_delivered(client.app[DB], endpoint["id"], 1)
    bodies = verified(receiver, "flaky", endpoint["secret"])
    assert [b["data"]["booking"]["id"] for b in bodies] == [booking["id"]] * 4
    assert {r.webhook_id for r in receiver.at("flaky")} == {f"msg_{message.id.hex}"}
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    [delivery] = log["data"]
    assert delivery["attemptCount"] == 4
    assert [(a["attempt"], a["outcome"], a["responseCode"]) for a in delivery["attempts"]] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "failed", 500),
        (4, "delivered", 200),
    ]

    async def counted() -> bool:  # the worker's figures, through Redis, on the web process's /metrics
        text = await (await client.get("/metrics")).text()
        return all(
            f'webhook_deliveries_total{{outcome="{name}"}} {value}' in text
            for name, value in (("sent", "1.0"), ("failed", "3.0"), ("retried", "3.0"))
        )

    await wait_for(counted, within=10, what="the deliveries counted on /metrics")


async def test_410_disables_the_endpoint(
    client: Client, register: Registrar, processes: Callable[..., Proc], receiver: Receiver
) -> None:
    await start_pair(processes)
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("gone"))
    receiver.scripts["gone"] = [410]
    await book(client, owner, 50)

    async def disabled() -> bool:
        shown = await (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).json()
        return shown["active"] is False

    await wait_for(disabled, within=15, what="the endpoint disabled")
    await book(client, owner, 60)  # a disabled endpoint subscribes to nothing
    notes = await (await client.get("/api/notifications", headers=auth(owner))).json()
    assert [n["kind"] for n in notes["data"]] == ["system.notification"]
    found = await messages(client.app[DB], endpoint["id"])
    assert [m.state for m in found] == ["failed"]
    assert len(receiver.at("gone")) == 1


async def test_a_hanging_receiver_does_not_delay_a_healthy_one(
    client: Client, register: Registrar, processes: Callable[..., Proc], receiver: Receiver
) -> None:
    await start_pair(processes)
    slow_owner, fast_owner = await register(), await register()
    slow = await add_endpoint(client, slow_owner, receiver.url("hang"))
    fast = await add_endpoint(client, fast_owner, receiver.url("fast"))
    receiver.hanging.add("hang")
    for n in range(12):
        await book(client, slow_owner, 50 + 2 * n)

    async def slots_taken() -> bool:
        return receiver.in_flight.get("hang", 0) >= 4

    await wait_for(slots_taken, within=15, what="the hanging endpoint's slots taken")
    for n in range(8):
        await book(client, fast_owner, 50 + 2 * n)
    await all_delivered(client.app[DB], fast["id"], 8)
    assert receiver.hanging and not receiver.release.is_set()  # delivered while the other still hangs
    assert len(verified(receiver, "fast", fast["secret"])) == 8
    # The hanging endpoint never held more than its concurrency limit of the worker's time.
    assert receiver.most_in_flight["hang"] <= 4, receiver.most_in_flight
    assert all(m.state == "pending" for m in await messages(client.app[DB], slow["id"]))


async def test_a_worker_killed_mid_delivery_redelivers_the_same_message_once(
    client: Client, register: Registrar, processes: Callable[..., Proc], receiver: Receiver
) -> None:
    worker, _ = await start_pair(processes)
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("kill"))
    receiver.hang_next["kill"] = 1
    await book(client, owner, 50)

    async def in_flight() -> bool:
        return receiver.in_flight.get("kill", 0) == 1

    await wait_for(in_flight, within=15, what="the delivery in flight")
    await asyncio.to_thread(worker.stop, signal.SIGKILL)
    replacement = processes("worker", ["worker", "--grace", "2"])
    await ready(replacement, "reminder worker ready")
    [message] = await all_delivered(client.app[DB], endpoint["id"], 1, within=40)
    requests = receiver.at("kill")
    assert len(requests) == 2  # the killed attempt and the one after its lease ran out
    assert {r.webhook_id for r in requests} == {f"msg_{message.id.hex}"}
    for request in requests:
        request.verify(endpoint["secret"])
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    # The killed attempt recorded nothing; the next is attempt 2.
    assert [(a["attempt"], a["outcome"]) for a in log["data"][0]["attempts"]] == [(2, "delivered")]


async def test_redis_flushall_loses_no_delivery(
    make_client: Callable[..., Any],
    private_redis: PrivateRedis,
    processes: Callable[..., Proc],
    receiver: Receiver,
) -> None:
    client: Client = await make_client(redis_url=private_redis.url)
    redis = Redis.from_url(private_redis.url)
    try:
        resp = await client.post(
            "/api/auth/register",
            json={
                "email": f"{uuid.uuid4().hex}@example.com",
                "password": "correct horse battery",
                "name": "F",
            },
        )
        owner = await resp.json()
        endpoint = await add_endpoint(client, owner, receiver.url("flush"), ["booking.created"])
        before = await book(client, owner, 50)  # handed to the stream, then wiped with everything else
        assert await redis.keys("*taskiq:stream")
        await redis.flushall()
        await start_pair(processes, REDIS_URL=private_redis.url)
        await all_delivered(client.app[DB], endpoint["id"], 1)
        await redis.flushall()  # and again while the worker and the scheduler run
        after = await book(client, owner, 60)
        await all_delivered(client.app[DB], endpoint["id"], 2)
    finally:
        await redis.aclose()
    bodies = verified(receiver, "flush", endpoint["secret"])
    assert [b["data"]["booking"]["id"] for b in bodies] == [before["id"], after["id"]]
