"""Webhooks through the real app and a real PostgreSQL: endpoints and their secret, hostile input, the SSRF
guard in production, the outbox written with the booking change (and not on a rollback), and delivery —
run in-process here, the worker's own code — to a real receiver on 127.0.0.1, verified with the
standardwebhooks library. tests/e2e/test_webhooks_e2e.py runs the same through real worker and scheduler
processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.base.settings import Settings
from server.web.keys import DB
from server.worker.webhook_delivery import Deliverer, DeliveryConfig
from server.worker.webhook_http import client_session
from storage import webhook_claims as store
from storage import webhook_endpoints as endpoint_store
from storage import webhook_log as log_store
from storage import webhook_outbox as outbox_store
from storage.db import Database
from tests.conftest import Client, Registrar, auth
from tests.support import unique_email, wait_for
from tests.webhook_support import Receiver, add_endpoint, running_receiver
from tests.ws_support import booking_data


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as recv:
        yield recv


@pytest.fixture
async def deliverer(client: Client) -> AsyncIterator[Deliverer]:
    """The worker's delivery code, in this process: a short timeout, a tiny retry base."""
    config = DeliveryConfig(timeout=1.0, retry_base=0.01, concurrency=4)
    session = client_session(production=False, timeout=config.timeout)
    try:
        yield Deliverer(db=client.app[DB], session=session, config=config)
    finally:
        await session.close()


async def messages_of(db: Database, endpoint_id: str) -> list[outbox_store.Message]:
    async with db.connect() as conn:
        found, _ = await log_store.deliveries(conn, endpoint_id=uuid.UUID(endpoint_id), offset=0, limit=100)
    return sorted((m for m, _ in found), key=lambda m: m.seq)


async def book(client: Client, user: dict[str, Any], hours: float = 50) -> dict[str, Any]:
    resp = await client.post("/api/booking", json=booking_data(hours=hours), headers=auth(user))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def deliver_until(deliverer: Deliverer, message_id: uuid.UUID, outcome: str) -> None:
    """Run attempts (as the dispatcher would enqueue them) until one ends with `outcome` (10 s at most)."""

    async def attempt() -> bool:
        return await deliverer.deliver(message_id) == outcome

    await wait_for(attempt, within=10, interval=0.02, what=f"a {outcome} attempt")


# --- endpoints and the secret ---------------------------------------------------------------------------


async def test_the_secret_is_shown_at_creation_and_never_read_back(
    client: Client, register: Registrar
) -> None:
    user = await register()
    created = await add_endpoint(
        client, user, "http://127.0.0.1:9/hook", ["booking.created"], description="crm"
    )
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["booking.created"] and created["active"] is True
    assert created["allBookings"] is False and created["description"] == "crm"
    one = await (await client.get(f"/api/webhooks/{created['id']}", headers=auth(user))).json()
    listed = await (await client.get("/api/webhooks", headers=auth(user))).json()
    patched = await (
        await client.patch(f"/api/webhooks/{created['id']}", json={"active": False}, headers=auth(user))
    ).json()
    for shown in (one, listed, patched):
        assert created["secret"] not in str(shown) and "secret" not in shown
    assert [e["id"] for e in listed["data"]] == [created["id"]] and listed["meta"]["total"] == 1
    assert patched["active"] is False


async def test_rotation_returns_a_new_secret_and_keeps_the_old_one_signing_for_a_day(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    user = await register()
    created = await add_endpoint(client, user, receiver.url("rotated"))
    resp = await client.post(f"/api/webhooks/{created['id']}/rotate-secret", headers=auth(user))
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["secret"] != created["secret"] and rotated["secret"].startswith("whsec_")
    keep_until = datetime.fromisoformat(rotated["previousSecretExpiresAt"])
    assert timedelta(hours=23, minutes=59) < keep_until - datetime.now(UTC) <= timedelta(hours=24)
    sent = await (await client.post(f"/api/webhooks/{created['id']}/test", headers=auth(user))).json()
    await deliver_until(deliverer, uuid.UUID(sent["id"]), "delivered")
    [request] = receiver.at("rotated")
    assert request.verify(rotated["secret"])["type"] == "webhook.test"
    assert request.verify(created["secret"])["type"] == "webhook.test"


async def test_deleting_an_endpoint_removes_it(client: Client, register: Registrar) -> None:
    user = await register()
    created = await add_endpoint(client, user, "http://127.0.0.1:9/x")
    assert (await client.delete(f"/api/webhooks/{created['id']}", headers=auth(user))).status == 204
    assert (await client.get(f"/api/webhooks/{created['id']}", headers=auth(user))).status == 404
    assert (await client.delete(f"/api/webhooks/{created['id']}", headers=auth(user))).status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["booking.created"]}, "url"),
        ({"url": "http://127.0.0.1:9/"}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["booking.exploded"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["*", "booking.created"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["booking.created", "booking.created"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": "booking.created"}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "secret": "mine"}, "secret"),
        ({"url": "ftp://127.0.0.1/", "events": ["*"]}, "url"),
        ({"url": "http://user:pw@127.0.0.1/", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "description": "a\u0000b"}, "description"),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "description": "x" * 501}, "description"),
        ({"url": "http://127.0.0.1:9/" + "a" * 2048, "events": ["*"]}, "url"),
        ({"url": 5, "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1:9/", "events": ["*"], "active": "maybe"}, "active"),
    ],
)
async def test_hostile_endpoint_bodies_get_400_naming_the_field(
    client: Client, register: Registrar, body: dict[str, Any], field: str
) -> None:
    user = await register()
    resp = await client.post("/api/webhooks", json=body, headers=auth(user))
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert field in {e["field"].split(".")[0] for e in problem["errors"]}, problem
    listed = await (await client.get("/api/webhooks", headers=auth(user))).json()
    assert listed["meta"]["total"] == 0, "a refused create left a row"


async def test_not_json_and_empty_patches_are_refused(client: Client, register: Registrar) -> None:
    user = await register()
    resp = await client.post(
        "/api/webhooks", data=b"{nope", headers={**auth(user), "Content-Type": "application/json"}
    )
    assert resp.status == 400
    created = await add_endpoint(client, user, "http://127.0.0.1:9/")
    resp = await client.patch(f"/api/webhooks/{created['id']}", json={}, headers=auth(user))
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    resp = await client.patch(f"/api/webhooks/{created['id']}", json={"events": ["nope"]}, headers=auth(user))
    assert resp.status == 400
    assert (await client.get("/api/webhooks/not-a-uuid", headers=auth(user))).status == 404


async def test_only_admins_subscribe_to_every_users_bookings(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    body = {"url": "http://127.0.0.1:9/", "events": ["*"], "allBookings": True}
    resp = await client.post("/api/webhooks", json=body, headers=auth(user))
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    resp = await client.post("/api/webhooks", json=body, headers=auth(admin))
    created = await resp.json()
    # Every booking of the session's other tests would reach it: gone at once.
    assert (await client.delete(f"/api/webhooks/{created['id']}", headers=auth(admin))).status == 204
    assert resp.status == 201 and created["allBookings"] is True


# --- SSRF: production refuses at creation and sends nothing at delivery ------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://localhost/hook",
        "https://0.0.0.0/hook",
    ],
)
async def test_production_refuses_private_and_plain_http_urls_with_400(
    make_client: Any, register: Registrar, url: str
) -> None:
    prod = await make_client(environment="production")
    resp = await prod.post(
        "/api/auth/register", json={"email": unique_email(), "password": "correct horse battery", "name": "P"}
    )
    user = await resp.json()
    resp = await prod.post("/api/webhooks", json={"url": url, "events": ["*"]}, headers=auth(user))
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "url"
    created = await (await prod.get("/api/webhooks", headers=auth(user))).json()
    assert created["meta"]["total"] == 0
    changed = await prod.patch("/api/webhooks/" + str(uuid.uuid4()), json={"url": url}, headers=auth(user))
    assert changed.status == 404  # (an unknown id: judged before the URL)


async def test_production_refuses_a_private_url_on_change_too(
    make_client: Any, client: Client, register: Registrar
) -> None:
    prod = await make_client(environment="production")
    resp = await prod.post(
        "/api/auth/register", json={"email": unique_email(), "password": "correct horse battery", "name": "P"}
    )
    user = await resp.json()
    async with prod.app[DB].connect() as conn:  # as if it had been public when created
        endpoint = await endpoint_store.create_endpoint(
            conn,
            user_id=uuid.UUID(user["user"]["id"]),
            all_bookings=False,
            url="https://example.com/hook",
            events=["*"],
            description=None,
            active=True,
            secret="whsec_AAAA",
        )
    resp = await prod.patch(
        f"/api/webhooks/{endpoint.id}", json={"url": "https://127.0.0.1/"}, headers=auth(user)
    )
    assert resp.status == 400
    assert (await (await prod.get(f"/api/webhooks/{endpoint.id}", headers=auth(user))).json())["url"] == (
        "https://example.com/hook"
    )


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"])
async def test_production_delivery_to_a_private_address_makes_no_request(
    client: Client, register: Registrar, receiver: Receiver, host: str
) -> None:
    """The endpoint row points at the receiver through a loopback name or address (as a name re-pointed
    after creation would): the production worker refuses before connecting; the receiver sees nothing."""
    user = await register()
    port = receiver.base_url.rsplit(":", 1)[1]
    async with client.app[DB].connect() as conn:
        endpoint = await endpoint_store.create_endpoint(
            conn,
            user_id=uuid.UUID(user["user"]["id"]),
            all_bookings=False,
            url=f"https://{host}:{port}/ssrf",
            events=["*"],
            description=None,
            active=True,
            secret="whsec_" + "A" * 44,
        )
    sent = await (await client.post(f"/api/webhooks/{endpoint.id}/test", headers=auth(user))).json()
    config = DeliveryConfig(timeout=1.0, retry_base=0.01, production=True)
    session = client_session(production=True, timeout=1.0)
    try:
        outcome = await Deliverer(db=client.app[DB], session=session, config=config).deliver(
            uuid.UUID(sent["id"])
        )
    finally:
        await session.close()
    assert outcome == "refused"
    assert receiver.received == []
    log = await (await client.get(f"/api/webhooks/{endpoint.id}/deliveries", headers=auth(user))).json()
    [attempt] = log["data"][0]["attempts"]
    assert attempt["outcome"] == "refused" and attempt["responseCode"] is None
    assert "address" in attempt["error"], attempt


# --- the outbox: exactly the committed changes --------------------------------------------------------------


async def test_each_booking_change_writes_one_message_per_subscribed_endpoint(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    owner, other = await register(), await register()
    everything = await add_endpoint(client, owner, "http://127.0.0.1:9/all")
    only_deleted = await add_endpoint(client, owner, "http://127.0.0.1:9/del", ["booking.deleted"])
    others = await add_endpoint(client, other, "http://127.0.0.1:9/other")
    inactive = await add_endpoint(client, owner, "http://127.0.0.1:9/off", active=False)
    every_user = await add_endpoint(client, admin, "http://127.0.0.1:9/admin", allBookings=True)
    admins_own = await add_endpoint(client, admin, "http://127.0.0.1:9/admin-own")

    try:
        booking = await book(client, owner)
        path = f"/api/booking/{booking['id']}"
        assert (await client.patch(path, json={"title": "renamed"}, headers=auth(owner))).status == 200
        cancel = await client.patch(f"{path}/status", json={"status": "cancelled"}, headers=auth(owner))
        assert cancel.status == 200
        assert (await client.delete(path, headers=auth(owner))).status == 204
    finally:  # the session's other tests' bookings must not reach it
        await client.patch(f"/api/webhooks/{every_user['id']}", json={"active": False}, headers=auth(admin))

    db = client.app[DB]
    lifecycle = ["booking.created", "booking.updated", "booking.cancelled", "booking.deleted"]
    assert [m.event_type for m in await messages_of(db, everything["id"])] == lifecycle
    assert [m.event_type for m in await messages_of(db, every_user["id"])] == lifecycle
    assert [m.event_type for m in await messages_of(db, only_deleted["id"])] == ["booking.deleted"]
    for nothing in (others, inactive, admins_own):
        assert await messages_of(db, nothing["id"]) == []
    [created, updated, cancelled, deleted] = await messages_of(db, everything["id"])
    assert {m.booking_id for m in (created, updated, cancelled, deleted)} == {uuid.UUID(booking["id"])}
    assert (
        created.payload["booking"]["title"] != "renamed" and updated.payload["booking"]["title"] == "renamed"
    )
    assert cancelled.payload["booking"]["status"] == "cancelled"
    assert deleted.payload["booking"]["id"] == booking["id"]


async def test_a_resource_booking_writes_its_messages_like_a_personal_one(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    """Resource creates and moves are written by the resource's actor with statements of their own: the
    outbox rows are in them too (capacity 1 and capacity N), and a full resource's 409 writes none."""
    owner, rival = await register(), await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/resources")
    rooms = []
    for capacity in (1, 2):
        resp = await client.post(
            "/api/resources",
            json={"name": f"Hooked {uuid.uuid4().hex[:8]}", "capacity": capacity},
            headers=auth(admin),
        )
        assert resp.status == 201, await resp.text()
        rooms.append((await resp.json())["id"])
    booked = []
    for n, room in enumerate(rooms):
        body = {**booking_data(hours=300 + 10 * n), "resourceId": room}
        resp = await client.post("/api/booking", json=body, headers=auth(owner))
        assert resp.status == 201, await resp.text()
        booked.append(await resp.json())
    # The capacity-1 room is taken for that slot: the rival's 409 writes nothing for anyone.
    taken = {**booking_data(hours=300), "resourceId": rooms[0]}
    assert (await client.post("/api/booking", json=taken, headers=auth(rival))).status == 409
    moved = {**booking_data(hours=305)}
    resp = await client.patch(f"/api/booking/{booked[0]['id']}", json=moved, headers=auth(owner))
    assert resp.status == 200, await resp.text()
    resp = await client.patch(
        f"/api/booking/{booked[1]['id']}/status", json={"status": "cancelled"}, headers=auth(owner)
    )
    assert resp.status == 200, await resp.text()

    found = await messages_of(client.app[DB], endpoint["id"])
    assert [(m.event_type, str(m.booking_id)) for m in found] == [
        ("booking.created", booked[0]["id"]),
        ("booking.created", booked[1]["id"]),
        ("booking.updated", booked[0]["id"]),
        ("booking.cancelled", booked[1]["id"]),
    ]
    assert found[0].payload["booking"]["resource_id"] == rooms[0]


async def test_a_refused_or_rolled_back_change_writes_no_message(client: Client, register: Registrar) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/all")
    booking = await book(client, owner, hours=80)
    overlapping = booking_data(hours=80)
    assert (await client.post("/api/booking", json=overlapping, headers=auth(owner))).status == 409
    path = f"/api/booking/{booking['id']}"
    stale = {**auth(owner), "If-Match": '"99"'}
    assert (await client.patch(path, json={"title": "no"}, headers=stale)).status == 412
    assert (await client.delete(path, headers=stale)).status == 412
    db = client.app[DB]
    # A transaction that writes a message and then fails leaves none behind.
    with pytest.raises(RuntimeError):
        async with db.begin() as conn:
            ids = await outbox_store.enqueue(
                conn,
                event_type="booking.updated",
                user_id=uuid.UUID(owner["user"]["id"]),
                booking_id=uuid.UUID(booking["id"]),
                payload={"booking": {}},
            )
            assert ids  # written inside the transaction
            raise RuntimeError("rolled back")
    assert [m.event_type for m in await messages_of(db, endpoint["id"])] == ["booking.created"]


# --- delivery -------------------------------------------------------------------------------------------


async def test_a_delivery_is_signed_to_the_spec_and_logged(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("crm"), ["booking.created"])
    receiver.answer_body["crm"] = b"x" * 3000
    booking = await book(client, owner)
    [message] = await messages_of(client.app[DB], endpoint["id"])
    assert await deliverer.deliver(message.id) == "delivered"
    assert await deliverer.deliver(message.id) == "done"  # a duplicate task: no second request
    [request] = receiver.at("crm")
    sent = request.verify(endpoint["secret"])
    assert sent["type"] == "booking.created"
    assert sent["data"]["booking"] == {k: v for k, v in booking.items()}
    assert request.webhook_id == f"msg_{message.id.hex}"
    assert request.headers["Content-Type"] == "application/json"
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    [delivery] = log["data"]
    assert delivery["state"] == "delivered" and delivery["webhookId"] == request.webhook_id
    assert delivery["deliveredAt"] is not None and delivery["lastStatus"] == 200
    [attempt] = delivery["attempts"]
    assert attempt["outcome"] == "delivered" and attempt["responseCode"] == 200
    assert attempt["responseBody"] == "x" * 1024 and attempt["latencyMs"] > 0


async def test_500_three_times_then_200_is_one_success_after_four_logged_attempts(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("flaky"))
    receiver.scripts["flaky"] = [500, 500, 500]
    await book(client, owner)
    [message] = await messages_of(client.app[DB], endpoint["id"])
    await deliver_until(deliverer, message.id, "delivered")
    assert len(receiver.at("flaky")) == 4
    assert len({r.webhook_id for r in receiver.at("flaky")}) == 1  # stable across retries
    timestamps = [int(r.headers["webhook-timestamp"]) for r in receiver.at("flaky")]
    assert timestamps == sorted(timestamps)
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    [delivery] = log["data"]
    assert delivery["state"] == "delivered" and delivery["attemptCount"] == 4
    assert [(a["attempt"], a["outcome"], a["responseCode"]) for a in delivery["attempts"]] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "failed", 500),
        (4, "delivered", 200),
    ]
    assert (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).status == 200
    assert (await (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).json())[
        "failingSince"
    ] is None


async def test_a_failed_attempt_waits_for_its_backoff(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("slowretry"))
    receiver.scripts["slowretry"] = [503]
    await book(client, owner)
    [message] = await messages_of(client.app[DB], endpoint["id"])
    slow = replace(deliverer, config=replace(deliverer.config, retry_base=3600))
    assert await slow.deliver(message.id) == "failed"
    assert await slow.deliver(message.id) == "early"  # not due for an hour
    [pending] = await messages_of(client.app[DB], endpoint["id"])
    assert pending.state == "pending" and pending.next_attempt_at > datetime.now(UTC) + timedelta(minutes=45)
    assert len(receiver.at("slowretry")) == 1


@pytest.mark.parametrize(("status", "why"), [(302, "redirect"), (404, "HTTP 404"), (204, None)])
async def test_redirects_are_failures_and_never_followed(
    client: Client,
    register: Registrar,
    receiver: Receiver,
    deliverer: Deliverer,
    status: int,
    why: str | None,
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("moved"))
    receiver.scripts["moved"] = [status]
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    outcome = await deliverer.deliver(uuid.UUID(sent["id"]))
    assert outcome == ("delivered" if why is None else "failed")
    assert receiver.at("redirected") == []
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    attempt = log["data"][0]["attempts"][0]
    assert attempt["responseCode"] == status
    assert (why or "") in (attempt["error"] or "")


async def test_no_answer_within_the_timeout_is_a_failure(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("hang"))
    receiver.hanging.add("hang")
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    assert await deliverer.deliver(uuid.UUID(sent["id"])) == "failed"
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    attempt = log["data"][0]["attempts"][0]
    assert attempt["error"] == "no answer within 1s" and attempt["responseCode"] is None


async def test_a_connection_error_is_a_failure(
    client: Client, register: Registrar, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/closed")  # discard port: refused
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    assert await deliverer.deliver(uuid.UUID(sent["id"])) == "failed"


async def test_410_disables_the_endpoint_at_once_and_tells_its_owner(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("gone"))
    receiver.scripts["gone"] = [410]
    first, second = await book(client, owner, hours=50), await book(client, owner, hours=60)
    messages = await messages_of(client.app[DB], endpoint["id"])
    assert await deliverer.deliver(messages[0].id) == "gone"
    shown = await (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).json()
    assert shown["active"] is False and "410" in shown["disabledReason"]
    assert await deliverer.deliver(messages[1].id) == "inactive"  # no request to a disabled endpoint
    assert len(receiver.at("gone")) == 1
    notes = await (await client.get("/api/notifications", headers=auth(owner))).json()
    assert [n["kind"] for n in notes["data"]] == ["system.notification"]
    assert notes["data"][0]["data"]["webhookId"] == endpoint["id"]
    # Re-enabling resumes the messages that waited.
    resp = await client.patch(f"/api/webhooks/{endpoint['id']}", json={"active": True}, headers=auth(owner))
    assert (await resp.json())["disabledReason"] is None
    assert await deliverer.deliver(messages[1].id) == "delivered"
    assert receiver.at("gone")[-1].json()["data"]["booking"]["id"] == second["id"] != first["id"]


async def test_an_endpoint_failing_for_five_days_is_disabled_and_its_owner_told(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("dead"))
    receiver.scripts["dead"] = [500, 500]
    async with client.app[DB].connect() as conn:
        await conn.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '4 days 23 hours' WHERE id = $1",
            uuid.UUID(endpoint["id"]),
        )
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    assert await deliverer.deliver(uuid.UUID(sent["id"])) == "failed"
    assert (await (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).json())["active"]
    async with client.app[DB].connect() as conn:
        await conn.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute' WHERE id = $1",
            uuid.UUID(endpoint["id"]),
        )
    await wait_for(
        lambda: _attempt(deliverer, uuid.UUID(sent["id"])), within=5, interval=0.02, what="the next attempt"
    )
    shown = await (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).json()
    assert shown["active"] is False and "5 days" in shown["disabledReason"]
    notes = await (await client.get("/api/notifications", headers=auth(owner))).json()
    assert [n["kind"] for n in notes["data"]] == ["system.notification"]


async def _attempt(deliverer: Deliverer, message_id: uuid.UUID) -> bool:
    return await deliverer.deliver(message_id) == "failed"


async def test_one_bookings_messages_go_in_order_and_the_endpoint_limit_holds(
    client: Client, register: Registrar, deliverer: Deliverer
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/order")
    booking = await book(client, owner, hours=50)
    await book(client, owner, hours=60)
    await client.patch(f"/api/booking/{booking['id']}", json={"title": "second"}, headers=auth(owner))
    db = client.app[DB]
    first, other_created, second = await messages_of(db, endpoint["id"])
    async with db.begin() as conn:
        assert await store.claim(conn, second.id, lease=30, concurrency=2) == "blocked"
    async with db.begin() as conn:
        taken = await store.claim(conn, first.id, lease=30, concurrency=1)
        assert isinstance(taken, store.Claim) and taken.attempt == 1
    async with db.begin() as conn:
        assert await store.claim(conn, first.id, lease=30, concurrency=1) == "locked"
        assert await store.claim(conn, other_created.id, lease=30, concurrency=1) == "busy"
        assert isinstance(await store.claim(conn, other_created.id, lease=30, concurrency=2), store.Claim)
        assert await store.claim(conn, second.id, lease=30, concurrency=5) == "blocked"


async def test_redelivery_and_test_events_reach_the_receiver(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer
) -> None:
    owner, other = await register(), await register()
    endpoint = await add_endpoint(client, owner, receiver.url("ops"), ["booking.deleted"])
    resp = await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))
    assert resp.status == 202
    sent = await resp.json()
    assert sent["eventType"] == "webhook.test" and sent["state"] == "pending"
    await deliver_until(deliverer, uuid.UUID(sent["id"]), "delivered")
    path = f"/api/webhooks/{endpoint['id']}/deliveries/{sent['id']}/redeliver"
    assert (await client.post(path, headers=auth(other))).status == 404
    resp = await client.post(path, headers=auth(owner))
    assert resp.status == 202 and (await resp.json())["state"] == "pending"
    await deliver_until(deliverer, uuid.UUID(sent["id"]), "delivered")
    first, again = receiver.at("ops")
    assert first.webhook_id == again.webhook_id  # the same message: a receiver that processed it may skip
    assert again.verify(endpoint["secret"])["data"]["webhookId"] == endpoint["id"]
    unknown = f"/api/webhooks/{endpoint['id']}/deliveries/{uuid.uuid4()}/redeliver"
    assert (await client.post(unknown, headers=auth(owner))).status == 404


async def test_the_delivery_log_pages_newest_first(client: Client, register: Registrar) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/log")
    ids = [
        (await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json())["id"]
        for _ in range(3)
    ]
    page = await (
        await client.get(f"/api/webhooks/{endpoint['id']}/deliveries?limit=2", headers=auth(owner))
    ).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["meta"]["total"] == 3
    bad = await client.get(f"/api/webhooks/{endpoint['id']}/deliveries?limit=0", headers=auth(owner))
    assert bad.status == 400


def test_settings_read_the_webhook_variables() -> None:
    parsed = Settings.from_env(
        {
            "WEBHOOK_TIMEOUT_SECONDS": "3",
            "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
            "WEBHOOK_ENDPOINT_CONCURRENCY": "2",
            "WEBHOOK_POLL_SECONDS": "0.25",
        }
    )
    config = DeliveryConfig.of(parsed)
    assert (config.timeout, config.retry_base, config.concurrency) == (3.0, 0.5, 2)
    assert config.lease == 8.0 and parsed.webhook_poll_seconds == 0.25


async def test_metrics_count_the_deliveries_on_both_services(
    client: Client,
    register: Registrar,
    admin: dict[str, Any],
    receiver: Receiver,
    deliverer: Deliverer,
    settings: Settings,
    aiohttp_client: Any,
) -> None:
    from redis.asyncio import Redis

    from server.jobs import create_jobs_app
    from server.worker.webhook_stats import WebhookStats

    redis = Redis.from_url(settings.redis_url)
    counted = replace(deliverer, stats=WebhookStats(redis, prefix=settings.redis_prefix))
    try:
        owner = await register()
        endpoint = await add_endpoint(client, owner, receiver.url("counted"))
        receiver.scripts["counted"] = [500]
        sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
        await deliver_until(counted, uuid.UUID(sent["id"]), "delivered")
        assert counted.stats is not None
        await counted.stats.flush()  # the worker does this every half second
    finally:
        await redis.aclose()
    text = await (await client.get("/metrics")).text()
    assert 'webhook_deliveries_total{outcome="sent"} 1.0' in text
    assert 'webhook_deliveries_total{outcome="failed"} 1.0' in text
    assert 'webhook_deliveries_total{outcome="retried"} 1.0' in text
    assert 'webhook_latency_milliseconds{quantile="0.99"}' in text
    assert "webhook_queue_depth " in text
    jobs = await aiohttp_client(create_jobs_app(settings))
    figures = (await (await jobs.get("/jobs/metrics", headers=auth(admin))).json())["webhooks"]
    assert figures["counters"] == {"sent": 1, "failed": 1, "retried": 1, "gone": 0, "refused": 0}
    assert figures["latencyMs"]["samples"] == 2 and isinstance(figures["queueDepth"], int)
    prometheus = await (await jobs.get("/jobs/metrics?format=prometheus", headers=auth(admin))).text()
    assert 'webhook_deliveries_total{outcome="sent"} 1.0' in prometheus


async def _booking_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    import asyncio
    import os

    from tests.processes import BOOKING

    env = {
        **os.environ,
        "NODE_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
    }
    proc = await asyncio.create_subprocess_exec(
        str(BOOKING),
        "webhooks",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_lists_endpoints_and_replays_what_was_given_up(
    client: Client, register: Registrar, settings: Settings
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/cli")
    sent = [
        (await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json())["id"]
        for _ in range(3)
    ]
    async with client.app[DB].connect() as conn:
        await conn.execute(
            "UPDATE webhook_messages SET state = 'failed' WHERE id = any($1::uuid[])",
            [uuid.UUID(i) for i in sent[:2]],
        )
    code, out, err = await _booking_cli(settings, "list")
    assert code == 0, err
    [line] = [row for row in out.splitlines() if row.startswith(endpoint["id"])]
    assert line.split()[1:6] == ["active", owner["user"]["id"], "*", "1", "2"], line
    code, out, err = await _booking_cli(settings, "replay", endpoint["id"], "--delivery", sent[0])
    assert (code, out.strip()) == (0, "1 message(s) to http://127.0.0.1:9/cli queued for delivery"), err
    code, out, err = await _booking_cli(settings, "replay", endpoint["id"])
    assert (code, out.split()[0]) == (0, "1"), err
    states = {m.state for m in await messages_of(client.app[DB], endpoint["id"])}
    assert states == {"pending"}
    code, out, err = await _booking_cli(settings, "replay", str(uuid.uuid4()))
    assert code != 0 and "no webhook endpoint" in err
    code, out, err = await _booking_cli(settings, "replay", "not-an-id")
    assert code == 2 and "not an id" in err


async def test_the_readme_receiver_works_as_printed(
    client: Client, register: Registrar, deliverer: Deliverer, tmp_path: Any
) -> None:
    """README's receiver, run as printed: it accepts what the service sends, once per webhook-id, and
    refuses a forged message."""
    import asyncio
    import os
    import re
    import socket
    import sys

    import aiohttp

    from tests.processes import ROOT, free_ports

    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("## Webhooks", 1)[1]
    found = re.search(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert found, "README's Webhooks section has no python block"
    script = tmp_path / "receiver.py"
    script.write_text(found.group(1), encoding="utf-8")
    owner = await register()
    [port] = free_ports(1)
    endpoint = await add_endpoint(client, owner, f"http://127.0.0.1:{port}/hooks/booking")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={**os.environ, "WEBHOOK_SECRET": endpoint["secret"], "PORT": str(port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        await wait_for(listening, within=20, what="the README receiver listening")
        booking = await book(client, owner)
        [message] = await messages_of(client.app[DB], endpoint["id"])
        assert await deliverer.deliver(message.id) == "delivered"
        redo = f"/api/webhooks/{endpoint['id']}/deliveries/{message.id}/redeliver"
        assert (await client.post(redo, headers=auth(owner))).status == 202
        await deliver_until(deliverer, message.id, "delivered")  # the same webhook-id: no second effect
        async with aiohttp.ClientSession() as session:
            forged = await session.post(
                f"http://127.0.0.1:{port}/hooks/booking",
                data=b'{"type":"booking.created"}',
                headers={"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
            )
            assert forged.status == 400
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    printed = [line for line in out.decode().splitlines() if line.startswith("booking.")]
    assert printed == [f"booking.created {booking['id']}"], out.decode()


async def test_concurrent_claims_take_a_message_once_and_respect_the_endpoint_limit(
    client: Client, register: Registrar
) -> None:
    """The database guard, raced: ten workers claiming one message get one claim; ten claiming ten
    messages of one endpoint with a limit of three get three."""
    import asyncio

    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/race")
    ids = [
        uuid.UUID(
            (await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json())[
                "id"
            ]
        )
        for _ in range(11)
    ]
    db = client.app[DB]

    async def claim(message_id: uuid.UUID, limit: int) -> store.Claim | str:
        async with db.begin() as conn:
            return await store.claim(conn, message_id, lease=30, concurrency=limit)

    one = await asyncio.gather(*(claim(ids[0], 20) for _ in range(10)))
    assert sum(isinstance(r, store.Claim) for r in one) == 1
    assert {r for r in one if isinstance(r, str)} == {"locked"}
    many = await asyncio.gather(*(claim(i, 4) for i in ids[1:]))  # one already in flight: 3 more
    assert sum(isinstance(r, store.Claim) for r in many) == 3
    assert {r for r in many if isinstance(r, str)} == {"busy"}


async def test_a_hand_off_refused_by_redis_leaves_the_message_to_the_scheduler_at_once(
    make_client: Any, private_redis: Any
) -> None:
    """Redis down at the commit: the booking stands, and its message is marked never enqueued, so the
    dispatcher takes it on its next pass rather than a lease later."""
    down = await make_client(redis_url=private_redis.url)
    resp = await down.post(
        "/api/auth/register", json={"email": unique_email(), "password": "correct horse battery", "name": "R"}
    )
    owner = await resp.json()
    endpoint = await add_endpoint(down, owner, "http://127.0.0.1:9/down")
    await asyncio.to_thread(private_redis.stop)
    await book(down, owner)
    [message] = await messages_of(down.app[DB], endpoint["id"])
    assert message.enqueued_at is None and message.state == "pending"
    async with down.app[DB].begin() as conn:
        due = await outbox_store.take_due(conn, grace=0, requeue=60, per_endpoint=4, batch=100)
    assert message.id in due


async def test_a_delivered_reminder_sends_one_booking_reminder_webhook(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer, settings: Settings
) -> None:
    import asyncio

    from redis.asyncio import Redis

    from server.bus.events import EventBus
    from server.worker.tasks import deliver
    from storage import reminders as reminder_store

    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("reminded"), ["booking.reminder"])
    start = datetime.now(UTC) + timedelta(minutes=30)
    body = {
        "title": "Reminded",
        "startTime": start.isoformat(),
        "endTime": (start + timedelta(minutes=30)).isoformat(),
        "reminderMinutesBefore": 60,  # past already: due now
    }
    booking = await (await client.post("/api/booking", json=body, headers=auth(owner))).json()
    db = client.app[DB]
    async with db.connect() as conn:
        row = await reminder_store.get_reminder(conn, uuid.UUID(booking["id"]))
    assert row is not None
    redis = Redis.from_url(settings.redis_url)
    try:
        bus = EventBus(redis, prefix=settings.redis_prefix)
        outcomes = await asyncio.gather(
            *(deliver(db, bus, booking_id=row.booking_id, due_at=row.due_at) for _ in range(3))
        )
    finally:
        await redis.aclose()
    assert sorted(o.status for o in outcomes) == ["duplicate", "duplicate", "sent"]
    [message] = await messages_of(db, endpoint["id"])
    assert message.event_type == "booking.reminder" and message.enqueued_at is None  # the dispatcher's
    assert await deliverer.deliver(message.id) == "delivered"
    sent = receiver.at("reminded")[0].verify(endpoint["secret"])
    assert sent["type"] == "booking.reminder"
    assert sent["data"]["booking"]["id"] == booking["id"]
    assert sent["data"]["booking"]["reminderSentAt"] is not None
    assert sent["data"]["reminder"]["minutesBefore"] == 60
    assert sent["data"]["reminder"]["notificationId"] == str(
        outcomes[[o.status for o in outcomes].index("sent")].notification_id
    )


async def test_deleting_an_endpoint_that_deadlocks_with_a_delivery_is_retried_never_a_500(
    client: Client, register: Registrar, caplog: Any
) -> None:
    """A worker holds a message and then wants its endpoint (the claim's lock order) while the delete
    holds the endpoint and wants the message: PostgreSQL aborts the delete, which waited first; the
    service retries it once the worker is done, and answers 204."""
    import asyncio
    import contextlib
    import logging

    import asyncpg

    caplog.set_level(logging.INFO, logger="actors.services.webhooks")
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/deadlock")
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    db = client.app[DB]
    async with db.pool.acquire() as worker:
        tx = worker.transaction()
        await tx.start()
        await worker.execute(
            "SELECT 1 FROM webhook_messages WHERE id = $1 FOR NO KEY UPDATE", uuid.UUID(sent["id"])
        )
        delete = asyncio.create_task(client.delete(f"/api/webhooks/{endpoint['id']}", headers=auth(owner)))

        async def delete_waits() -> bool:
            async with db.connect() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'DELETE FROM webhook_endpoints%'"
                    )
                )

        await wait_for(delete_waits, within=10, what="the delete waiting on the worker's lock")
        # Were this one the victim instead, the delete would go through at once (and the log below
        # would say no retry happened).
        with contextlib.suppress(asyncpg.DeadlockDetectedError):
            await worker.execute(
                "SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR NO KEY UPDATE", uuid.UUID(endpoint["id"])
            )
        await tx.rollback()
        resp = await delete
    assert resp.status == 204, await resp.text()
    assert (await client.get(f"/api/webhooks/{endpoint['id']}", headers=auth(owner))).status == 404
    assert any("deadlock deleting webhook endpoint" in r.getMessage() for r in caplog.records)


async def test_an_attempt_that_outlived_its_lease_cannot_settle_the_message(
    client: Client, register: Registrar
) -> None:
    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/lease")
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    message_id = uuid.UUID(sent["id"])
    db = client.app[DB]
    async with db.begin() as conn:
        late = await store.claim(conn, message_id, lease=0.05, concurrency=4)
    assert isinstance(late, store.Claim)

    async def reclaimed() -> store.Claim | None:
        async with db.begin() as conn:
            again = await store.claim(conn, message_id, lease=30, concurrency=4)
        return again if isinstance(again, store.Claim) else None

    current = await wait_for(reclaimed, within=5, interval=0.02, what="the lease to run out")
    assert (late.attempt, current.attempt) == (1, 2)
    async with db.connect() as conn:
        settled, _ = await store.record_delivered(
            conn, late, response_code=200, latency_ms=1.0, response_body=""
        )
        assert not settled
        [message] = await messages_of(db, endpoint["id"])
        assert message.state == "pending"  # the late answer did not settle it
        settled, _ = await store.record_delivered(
            conn, current, response_code=200, latency_ms=1.0, response_body=""
        )
        assert settled
    [message] = await messages_of(db, endpoint["id"])
    assert message.state == "delivered"
    log = await (await client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=auth(owner))).json()
    assert [a["attempt"] for a in log["data"][0]["attempts"]] == [1, 2]  # both attempts are in the log


async def test_cleanup_purges_settled_messages_older_than_30_days(
    client: Client, register: Registrar, admin: dict[str, Any], settings: Settings, aiohttp_client: Any
) -> None:
    from server.jobs import create_jobs_app

    owner = await register()
    endpoint = await add_endpoint(client, owner, "http://127.0.0.1:9/old")
    ids = [
        uuid.UUID(
            (await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json())[
                "id"
            ]
        )
        for _ in range(4)
    ]
    async with client.app[DB].connect() as conn:
        for message_id, state, age in zip(
            ids, ("delivered", "failed", "pending", "delivered"), (31, 31, 31, 29), strict=True
        ):
            await conn.execute(
                "UPDATE webhook_messages SET state = $2, created_at = now() - make_interval(days => $3) "
                "WHERE id = $1",
                message_id,
                state,
                age,
            )
            await conn.execute(
                "INSERT INTO webhook_attempts (message_id, attempt, outcome, latency_ms) "
                "VALUES ($1, 1, 'failed', 1)",
                message_id,
            )
    jobs = await aiohttp_client(create_jobs_app(settings))
    resp = await jobs.post("/jobs/cleanup", headers=auth(admin))
    assert resp.status == 200
    assert (await resp.json())["webhookMessages"] >= 2
    left = await messages_of(client.app[DB], endpoint["id"])
    assert {m.id for m in left} == {ids[2], ids[3]}  # the pending one and the recent one
    async with client.app[DB].connect() as conn:
        attempts = await conn.fetchval(
            "SELECT count(*) FROM webhook_attempts WHERE message_id = any($1::uuid[])", ids[:2]
        )
    assert attempts == 0


async def test_no_webhook_secret_reaches_the_logs(
    client: Client, register: Registrar, receiver: Receiver, deliverer: Deliverer, caplog: Any
) -> None:
    import logging

    from server.web.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    owner = await register()
    endpoint = await add_endpoint(client, owner, receiver.url("logged"))
    rotated = await (
        await client.post(f"/api/webhooks/{endpoint['id']}/rotate-secret", headers=auth(owner))
    ).json()
    receiver.scripts["logged"] = [500, 410]
    sent = await (await client.post(f"/api/webhooks/{endpoint['id']}/test", headers=auth(owner))).json()
    await deliver_until(deliverer, uuid.UUID(sent["id"]), "gone")
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert any("webhook" in r.getMessage() for r in records), "nothing logged: the check proves nothing"
    text = "\n".join(f"{JsonFormatter().format(r)} {r.__dict__}" for r in records)
    for secret in (endpoint["secret"], rotated["secret"]):
        assert secret not in text and secret.removeprefix("whsec_") not in text
