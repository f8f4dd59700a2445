"""Resources over REST and WebSocket against real PostgreSQL and Redis: CRUD, hostile input, booking a
resource (capacity 1 with buffers, capacity N by maximum overlap), busy-time privacy, booking on behalf of
a user, attendees, and `resource.busy.changed`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import Client, Registrar, auth
from tests.ws_support import ask, events_until_pong, next_frame


def at(hours: float, base: datetime | None = None) -> str:
    moment = (base or _BASE) + timedelta(hours=hours)
    return moment.isoformat().replace("+00:00", "Z")


# Whole hours, three days ahead: far from "now" for every rule, and the same for every test.
_BASE = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)


def body(start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {"title": "Use", "startTime": at(start), "endTime": at(end), **extra}


async def new_resource(client: Client, admin: dict[str, Any], **fields: Any) -> dict[str, Any]:
    payload = {"name": f"Room {uuid.uuid4().hex[:8]}", **fields}
    resp = await client.post("/api/resources", json=payload, headers=auth(admin))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def book(
    client: Client, session: dict[str, Any], payload: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/booking", json=payload, headers=auth(session))
    data: dict[str, Any] = await resp.json()
    return resp.status, data


# --- CRUD ---------------------------------------------------------------------------------------


async def test_admin_creates_reads_lists_changes_and_retires_a_resource(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    created = await new_resource(
        client,
        admin,
        description="Second floor",
        kind="room",
        timeZone="Europe/Paris",
        capacity=8,
        bufferBeforeMinutes=5,
        bufferAfterMinutes=10,
        minNoticeMinutes=30,
        maxAdvanceDays=90,
    )
    assert created["capacity"] == 8 and created["timeZone"] == "Europe/Paris" and created["active"] is True
    assert created["bufferBeforeMinutes"] == 5 and created["bufferAfterMinutes"] == 10
    assert created["minNoticeMinutes"] == 30 and created["maxAdvanceDays"] == 90 and created["version"] == 1

    read = await client.get(f"/api/resources/{created['id']}", headers=auth(user))
    assert read.status == 200 and read.headers["ETag"] == '"1"'
    assert await read.json() == created

    listed = await (await client.get("/api/resources?limit=100", headers=auth(user))).json()
    assert created["id"] in {r["id"] for r in listed["data"]}
    assert listed["meta"]["page"] == 1 and listed["meta"]["limit"] == 100

    stale = await client.patch(
        f"/api/resources/{created['id']}", json={"capacity": 3}, headers={**auth(admin), "If-Match": '"7"'}
    )
    assert stale.status == 412
    changed = await client.patch(
        f"/api/resources/{created['id']}", json={"capacity": 3}, headers={**auth(admin), "If-Match": '"1"'}
    )
    assert changed.status == 200, await changed.text()
    assert (await changed.json())["capacity"] == 3 and changed.headers["ETag"] == '"2"'

    retired = await client.delete(f"/api/resources/{created['id']}", headers=auth(admin))
    assert retired.status == 204
    after = await (await client.get(f"/api/resources/{created['id']}", headers=auth(user))).json()
    assert after["active"] is False
    listed = await (await client.get("/api/resources?limit=100", headers=auth(user))).json()
    assert created["id"] not in {r["id"] for r in listed["data"]}
    everything = await (
        await client.get("/api/resources?limit=100&includeRetired=true", headers=auth(admin))
    ).json()
    assert created["id"] in {r["id"] for r in everything["data"]}
    refused = await client.get("/api/resources?includeRetired=true", headers=auth(user))
    assert refused.status == 403


async def test_names_are_unique_among_active_resources_in_any_case(
    client: Client, admin: dict[str, Any]
) -> None:
    name = f"Studio {uuid.uuid4().hex[:6]}"
    first = await new_resource(client, admin, name=name)
    again = await client.post("/api/resources", json={"name": name.upper()}, headers=auth(admin))
    assert again.status == 409, await again.text()
    await client.delete(f"/api/resources/{first['id']}", headers=auth(admin))
    reused = await client.post("/api/resources", json={"name": name.lower()}, headers=auth(admin))
    assert reused.status == 201  # the retired one no longer holds the name
    back = await client.patch(f"/api/resources/{first['id']}", json={"active": True}, headers=auth(admin))
    assert back.status == 409  # bringing the old one back would make two


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "Z", "timeZone": "Mars/Olympus"}, "timeZone"),
        ({"name": "Z", "timeZone": ""}, "timeZone"),
        ({"name": "Z", "capacity": 0}, "capacity"),
        ({"name": "Z", "capacity": 10001}, "capacity"),
        ({"name": "Z", "capacity": "5"}, "capacity"),
        ({"name": "Z", "bufferBeforeMinutes": -1}, "bufferBeforeMinutes"),
        ({"name": "Z", "bufferAfterMinutes": 1441}, "bufferAfterMinutes"),
        ({"name": "Z", "minNoticeMinutes": -5}, "minNoticeMinutes"),
        ({"name": "Z", "maxAdvanceDays": 3651}, "maxAdvanceDays"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": "Z", "kind": ""}, "kind"),
        ({"name": "Z\u0000"}, "name"),
        ({"name": "Z", "owner": "me"}, "owner"),
        ({}, "name"),
    ],
)
async def test_hostile_resource_input_is_a_400_with_the_field(
    client: Client, admin: dict[str, Any], payload: dict[str, Any], field: str
) -> None:
    before = await (await client.get("/api/resources?includeRetired=true", headers=auth(admin))).json()
    resp = await client.post("/api/resources", json=payload, headers=auth(admin))
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert field in {e["field"] for e in problem["errors"]}, problem
    after = await (await client.get("/api/resources?includeRetired=true", headers=auth(admin))).json()
    assert after["meta"]["total"] == before["meta"]["total"]  # nothing half-written


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"timeZone": "Mars/Olympus"}, "timeZone"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 10001}, "capacity"),
        ({"bufferBeforeMinutes": 1441}, "bufferBeforeMinutes"),
        ({"bufferAfterMinutes": -1}, "bufferAfterMinutes"),
        ({"name": ""}, "name"),
        ({"active": "maybe"}, "active"),
        ({"version": 9}, "version"),
        ({}, "body"),
    ],
)
async def test_hostile_resource_changes_are_400s_and_change_nothing(
    client: Client, admin: dict[str, Any], payload: dict[str, Any], field: str
) -> None:
    resource = await new_resource(client, admin)
    resp = await client.patch(f"/api/resources/{resource['id']}", json=payload, headers=auth(admin))
    assert resp.status == 400, await resp.text()
    assert field in {e["field"] for e in (await resp.json())["errors"]}
    read = await (await client.get(f"/api/resources/{resource['id']}", headers=auth(admin))).json()
    assert read == resource


async def test_an_unknown_zone_in_a_change_is_a_400_and_changes_nothing(
    client: Client, admin: dict[str, Any]
) -> None:
    resource = await new_resource(client, admin)
    resp = await client.patch(
        f"/api/resources/{resource['id']}", json={"timeZone": "Nowhere/Land"}, headers=auth(admin)
    )
    assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "timeZone"
    read = await (await client.get(f"/api/resources/{resource['id']}", headers=auth(admin))).json()
    assert read == resource


async def test_only_admins_create_change_or_retire(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    resource = await new_resource(client, admin)
    assert (await client.post("/api/resources", json={"name": "Mine"}, headers=auth(user))).status == 403
    patch = await client.patch(f"/api/resources/{resource['id']}", json={"capacity": 9}, headers=auth(user))
    assert patch.status == 403
    assert (await client.delete(f"/api/resources/{resource['id']}", headers=auth(user))).status == 403
    assert (await client.get(f"/api/resources/{resource['id']}", headers=auth(user))).status == 200
    assert (await client.get(f"/api/resources/{uuid.uuid4()}", headers=auth(user))).status == 404
    assert (await client.get("/api/resources/not-a-uuid", headers=auth(user))).status == 404
    read = await (await client.get(f"/api/resources/{resource['id']}", headers=auth(admin))).json()
    assert read == resource


# --- booking a resource ---------------------------------------------------------------------------


async def test_capacity_one_refuses_overlaps_buffers_included_and_names_the_booking(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    room = await new_resource(client, admin, bufferBeforeMinutes=15, bufferAfterMinutes=15)
    status, first = await book(client, alice, body(10, 11, resourceId=room["id"]))
    assert status == 201, first
    assert first["resourceId"] == room["id"]
    # 11:00-12:00 does not overlap 10-11, but the buffers do: 10:45 (before) vs 11:15 (after).
    status, refused = await book(client, bob, body(11, 12, resourceId=room["id"]))
    assert status == 409, refused
    assert refused["conflictingId"] == first["id"]
    # Half an hour apart (15 + 15 minutes of buffers): fits.
    status, fits = await book(client, bob, body(11.5, 12.5, resourceId=room["id"]))
    assert status == 201, fits
    # Personal bookings at the same time are not the resource's business.
    status, personal = await book(client, bob, body(10, 11))
    assert status == 201 and personal["resourceId"] is None


async def test_capacity_n_counts_the_maximum_overlap_not_the_bookings_that_touch(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    users = [await register() for _ in range(5)]
    room = await new_resource(client, admin, capacity=2)
    # 9-10 and 10-11 never overlap each other; 9:30-10:30 overlaps both: at most 2 at any instant.
    for user, (s, e) in zip(users, [(9, 10), (10, 11), (9.5, 10.5)], strict=False):
        status, data = await book(client, user, body(s, e, resourceId=room["id"]))
        assert status == 201, data
    # 9:45-10:15 would make 3 at 9:45 (9-10, 9:30-10:30 and it).
    status, full = await book(client, users[3], body(9.75, 10.25, resourceId=room["id"]))
    assert status == 409, full
    assert full["detail"] == "resource full"
    assert len(full["conflictingIds"]) == 2
    # 10:45-11:30 only meets 10-11 (9:30-10:30 ended): 2 at most.
    status, fits = await book(client, users[4], body(10.75, 11.5, resourceId=room["id"]))
    assert status == 201, fits


async def test_cancelling_frees_the_seat_at_once_and_moves_obey_capacity(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    room = await new_resource(client, admin)
    _, first = await book(client, alice, body(30, 31, resourceId=room["id"]))
    status, other = await book(client, bob, body(32, 33, resourceId=room["id"]))
    assert status == 201
    # Moving bob's booking onto alice's: 409 naming hers; extending it into hers: the same.
    moved = await client.patch(
        f"/api/booking/{other['id']}", json={"startTime": at(30.5), "endTime": at(31.5)}, headers=auth(bob)
    )
    assert moved.status == 409 and (await moved.json())["conflictingId"] == first["id"]
    longer = await client.patch(
        f"/api/booking/{other['id']}", json={"startTime": at(30.5)}, headers=auth(bob)
    )
    assert longer.status == 409
    cancel = await client.patch(
        f"/api/booking/{first['id']}/status", json={"status": "cancelled"}, headers=auth(alice)
    )
    assert cancel.status == 200
    moved = await client.patch(
        f"/api/booking/{other['id']}", json={"startTime": at(30.5), "endTime": at(31.5)}, headers=auth(bob)
    )
    assert moved.status == 200, await moved.text()


async def test_changing_the_resource_of_a_booking_obeys_the_target(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    a, b = await new_resource(client, admin), await new_resource(client, admin)
    _, on_b = await book(client, alice, body(40, 41, resourceId=b["id"]))
    _, mine = await book(client, bob, body(40, 41, resourceId=a["id"]))
    to_b = await client.patch(f"/api/booking/{mine['id']}", json={"resourceId": b["id"]}, headers=auth(bob))
    assert to_b.status == 409 and (await to_b.json())["conflictingId"] == on_b["id"]
    personal = await client.patch(f"/api/booking/{mine['id']}", json={"resourceId": None}, headers=auth(bob))
    assert personal.status == 200 and (await personal.json())["resourceId"] is None
    # Now free on a: a personal booking can take a resource, too.
    status, _ = await book(client, alice, body(42, 43, resourceId=a["id"]))
    assert status == 201
    back = await client.patch(f"/api/booking/{mine['id']}", json={"resourceId": a["id"]}, headers=auth(bob))
    assert back.status == 200 and (await back.json())["resourceId"] == a["id"]


async def test_the_owners_own_rule_still_holds_on_a_resource(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice = await register()
    a, b = await new_resource(client, admin, capacity=5), await new_resource(client, admin, capacity=5)
    _, first = await book(client, alice, body(50, 51, resourceId=a["id"]))
    status, refused = await book(client, alice, body(50.5, 51.5, resourceId=b["id"]))
    assert status == 409 and refused["conflictingId"] == first["id"]


async def test_notice_advance_retired_and_unknown_resources(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    strict = await new_resource(client, admin, minNoticeMinutes=24 * 60 * 5, maxAdvanceDays=10)
    status, soon = await book(client, user, body(1, 2, resourceId=strict["id"]))  # 3 days < 5 days' notice
    assert status == 400 and soon["errors"][0]["field"] == "startTime", soon
    status, far = await book(client, user, body(24 * 20, 24 * 20 + 1, resourceId=strict["id"]))
    assert status == 400 and far["errors"][0]["field"] == "startTime", far
    status, fits = await book(client, user, body(24 * 4, 24 * 4 + 1, resourceId=strict["id"]))
    assert status == 201, fits

    room = await new_resource(client, admin)
    _, kept = await book(client, user, body(60, 61, resourceId=room["id"]))
    assert (await client.delete(f"/api/resources/{room['id']}", headers=auth(admin))).status == 204
    status, retired = await book(client, user, body(62, 63, resourceId=room["id"]))
    assert status == 409 and "retired" in retired["detail"]
    still = await client.get(f"/api/booking/{kept['id']}", headers=auth(user))
    assert still.status == 200  # its existing bookings stay
    status, unknown = await book(client, user, body(64, 65, resourceId=str(uuid.uuid4())))
    assert status == 400 and unknown["errors"][0]["field"] == "resourceId"
    status, malformed = await book(client, user, body(64, 65, resourceId="room-1"))
    assert status == 400 and malformed["errors"][0]["field"] == "resourceId"


async def test_another_users_booking_id_is_a_404_and_stays_as_it_was(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, mallory = await register(), await register()
    room = await new_resource(client, admin)
    _, hers = await book(client, alice, body(70, 71, resourceId=room["id"]))
    for method, path, payload in [
        ("GET", f"/api/booking/{hers['id']}", None),
        ("PATCH", f"/api/booking/{hers['id']}", {"resourceId": None}),
        ("PATCH", f"/api/booking/{hers['id']}/status", {"status": "cancelled"}),
        ("DELETE", f"/api/booking/{hers['id']}", None),
    ]:
        resp = await client.request(method, path, json=payload, headers=auth(mallory))
        assert resp.status == 404, (method, path, await resp.text())
    assert await (await client.get(f"/api/booking/{hers['id']}", headers=auth(alice))).json() == hers


async def test_a_change_to_the_resource_applies_to_the_next_booking_at_once(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    """The resource's actor writes with the row it read last, checked by version in the insert: a change
    made since (here a buffer) is seen by the very next booking, existing bookings keep theirs."""
    alice, bob = await register(), await register()
    room = await new_resource(client, admin)
    _, first = await book(client, alice, body(150, 151, resourceId=room["id"]))
    changed = await client.patch(
        f"/api/resources/{room['id']}", json={"bufferBeforeMinutes": 60}, headers=auth(admin)
    )
    assert changed.status == 200
    # 151-152 touches nothing without buffers; with 60 minutes before it is busy from 150.
    status, refused = await book(client, bob, body(151, 152, resourceId=room["id"]))
    assert status == 409 and refused["conflictingId"] == first["id"], refused
    url = f"/api/resources/{room['id']}/busy?from={at(149)}&to={at(153)}"
    busy = (await (await client.get(url, headers=auth(bob))).json())["data"]
    assert busy == [{"start": at(150), "end": at(151)}]  # the existing booking keeps its range


# --- busy time and privacy ----------------------------------------------------------------------------


async def test_busy_shows_everyone_the_time_and_only_owners_and_admins_the_details(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    room = await new_resource(client, admin, bufferAfterMinutes=30)
    _, hers = await book(client, alice, body(80, 81, resourceId=room["id"], title="Private review"))
    url = f"/api/resources/{room['id']}/busy?from={at(79)}&to={at(83)}".replace("+", "%2B")
    seen_by_bob = (await (await client.get(url, headers=auth(bob))).json())["data"]
    assert seen_by_bob == [{"start": at(80), "end": at(81.5)}]
    seen_by_alice = (await (await client.get(url, headers=auth(alice))).json())["data"]
    assert seen_by_alice[0]["bookingId"] == hers["id"] and seen_by_alice[0]["title"] == "Private review"
    seen_by_admin = (await (await client.get(url, headers=auth(admin))).json())["data"]
    assert seen_by_admin[0]["userId"] == alice["user"]["id"]
    # The booking itself stays private.
    assert (await client.get(f"/api/booking/{hers['id']}", headers=auth(bob))).status == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from={a}", "to"),
        ("to={b}", "from"),
        ("from={b}&to={a}", "to"),
        ("from={a}&to={far}", "to"),
        ("from=yesterday&to={b}", "from"),
    ],
)
async def test_hostile_busy_queries(
    client: Client, register: Registrar, admin: dict[str, Any], query: str, field: str
) -> None:
    user = await register()
    room = await new_resource(client, admin)
    q = query.format(a=at(0), b=at(5), far=at(24 * 32))
    resp = await client.get(f"/api/resources/{room['id']}/busy?{q}", headers=auth(user))
    assert resp.status == 400, await resp.text()
    assert field in {e["field"] for e in (await resp.json())["errors"]}
    missing = await client.get(
        f"/api/resources/{uuid.uuid4()}/busy?from={at(0)}&to={at(5)}", headers=auth(user)
    )
    assert missing.status == 404


# --- on behalf, attendees -------------------------------------------------------------------------


async def test_an_admin_books_moves_and_cancels_for_a_user_and_the_audit_names_the_admin(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, mallory = await register(), await register()
    room = await new_resource(client, admin)
    status, made = await book(client, admin, body(90, 91, resourceId=room["id"], userId=alice["user"]["id"]))
    assert status == 201, made
    assert made["userId"] == alice["user"]["id"]
    assert (await client.get(f"/api/booking/{made['id']}", headers=auth(alice))).status == 200
    moved = await client.patch(
        f"/api/booking/{made['id']}", json={"startTime": at(89.5)}, headers=auth(admin)
    )
    assert moved.status == 200, await moved.text()
    cancel = await client.patch(
        f"/api/booking/{made['id']}/status", json={"status": "cancelled"}, headers=auth(admin)
    )
    assert cancel.status == 200
    history = await (await client.get(f"/api/booking/{made['id']}/history", headers=auth(admin))).json()
    assert [e["actorId"] for e in history["data"]] == [admin["user"]["id"]] * 3

    status, refused = await book(client, mallory, body(92, 93, userId=alice["user"]["id"]))
    assert status == 403, refused
    status, own = await book(client, mallory, body(92, 93, userId=mallory["user"]["id"]))
    assert status == 201 and own["userId"] == mallory["user"]["id"]
    status, nobody = await book(client, admin, body(94, 95, userId=str(uuid.uuid4())))
    assert status == 400 and nobody["errors"][0]["field"] == "userId"


async def test_attendees_are_stored_and_returned_and_validated(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    people = [{"email": "ada@example.com", "name": "Ada"}, {"email": "bob@example.com"}]
    status, made = await book(client, user, body(100, 101, attendees=people))
    assert status == 201, made
    assert made["attendees"] == [
        {"email": "ada@example.com", "name": "Ada"},
        {"email": "bob@example.com", "name": None},
    ]
    read = await (await client.get(f"/api/booking/{made['id']}", headers=auth(user))).json()
    assert read["attendees"] == made["attendees"]
    changed = await client.patch(f"/api/booking/{made['id']}", json={"attendees": []}, headers=auth(user))
    assert (await changed.json())["attendees"] == []
    for bad, field in [
        ([{"email": "not-an-email"}], "attendees.0.email"),
        ([{"name": "No mail"}], "attendees.0.email"),
        ([{"email": "a@example.com", "phone": "1"}], "attendees.0.phone"),
        ([{"email": f"p{n}@example.com"} for n in range(101)], "attendees"),
        ("ada@example.com", "attendees"),
    ]:
        status, problem = await book(client, user, body(102, 103, attendees=bad))
        assert status == 400, problem
        assert field in {e["field"] for e in problem["errors"]}, (field, problem)


async def test_old_clients_see_the_same_booking_fields_plus_the_new_optional_ones(
    client: Client, register: Registrar
) -> None:
    user = await register()
    status, made = await book(client, user, body(110, 111))
    assert status == 201
    assert made["resourceId"] is None and made["attendees"] == []
    for key in (
        "id",
        "userId",
        "title",
        "startTime",
        "endTime",
        "status",
        "version",
        "reminderMinutesBefore",
    ):
        assert key in made


# --- WebSocket: resource rooms ----------------------------------------------------------------------


async def test_watchers_get_busy_changes_without_details_and_the_owner_keeps_booking_events(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    room = await new_resource(client, admin)
    watcher = await client.ws_connect(f"/ws/?token={bob['accessToken']}")
    owner = await client.ws_connect(f"/ws/?token={alice['accessToken']}")
    try:
        joined = await ask(watcher, "join-resource-room", {"resourceId": room["id"]})
        assert joined["event"] == "join-resource-room", joined
        assert joined["data"]["resourceRooms"] == [room["id"]]
        unknown = await ask(watcher, "join-resource-room", {"resourceId": str(uuid.uuid4())}, id="u")
        assert unknown["event"] == "error" and unknown["data"]["status"] == 404
        bad = await ask(watcher, "join-resource-room", {"resourceId": "x"}, id="b")
        assert bad["event"] == "error" and bad["data"]["status"] == 400

        _, made = await book(client, alice, body(120, 121, resourceId=room["id"], title="Secret"))
        event = await next_frame(watcher)
        assert event["event"] == "resource.busy.changed"
        assert event["data"] == {"resourceId": room["id"], "start": at(120), "end": at(121)}
        assert "Secret" not in str(event)
        mine = await next_frame(owner)
        assert mine["event"] == "booking.created" and mine["data"]["id"] == made["id"]

        await client.patch(
            f"/api/booking/{made['id']}/status", json={"status": "cancelled"}, headers=auth(alice)
        )
        freed = await next_frame(watcher)
        assert freed["event"] == "resource.busy.changed" and freed["data"]["start"] == at(120)

        left = await ask(watcher, "leave-resource-room", {"resourceId": room["id"]}, id="l")
        assert left["data"]["resourceRooms"] == []
        await book(client, alice, body(122, 123, resourceId=room["id"]))
        assert [f for f in await events_until_pong(watcher) if f["event"] == "resource.busy.changed"] == []
    finally:
        await watcher.close()
        await owner.close()


async def test_both_the_admin_and_the_owner_get_the_events_of_a_booking_made_on_behalf(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    alice = await register()
    owner = await client.ws_connect(f"/ws/?token={alice['accessToken']}")
    acting = await client.ws_connect(f"/ws/?token={admin['accessToken']}")
    try:
        await ask(owner, "ping")
        await ask(acting, "ping")
        status, made = await book(client, admin, body(130, 131, userId=alice["user"]["id"]))
        assert status == 201
        for ws in (owner, acting):
            got = await next_frame(ws)
            assert got["event"] == "booking.created" and got["data"]["id"] == made["id"]
    finally:
        await owner.close()
        await acting.close()


# --- the mechanism, step by step: the row lock orders two writers of one capacity-N resource -------


async def test_a_second_writer_waits_on_the_resource_row_lock_and_then_sees_the_first_ones_booking(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    """Two writers of the capacity-N statement, interleaved by hand: B's statement waits on the row lock
    A's statement took, and B's count (a statement of its own inside resource_has_room, so a fresh
    snapshot) sees A's booking once A commits, so B is refused. Without the lock B would count before A
    commits and both would take the last seat."""
    from server.web.keys import DB
    from storage import resource_bookings as store
    from tests.support import wait_for

    alice, bob, carol = await register(), await register(), await register()
    room = await new_resource(client, admin, capacity=2)
    status, _ = await book(client, carol, body(140, 141, resourceId=room["id"]))
    assert status == 201
    db = client.app[DB]
    rid = uuid.UUID(room["id"])

    async def fields(session: dict[str, Any]) -> dict[str, Any]:
        async with db.connect() as conn:
            seq = await conn.fetchval("SELECT seq FROM users WHERE id = $1", uuid.UUID(session["user"]["id"]))
            rseq, version = await conn.fetchrow("SELECT seq, version FROM resources WHERE id = $1", rid)
        start = datetime.fromisoformat(at(140).replace("Z", "+00:00"))
        return {
            "id": uuid.uuid4(),
            "user_id": uuid.UUID(session["user"]["id"]),
            "user_seq": seq,
            "title": "by hand",
            "description": None,
            "location": None,
            "notes": None,
            "start_time": start,
            "end_time": start + timedelta(hours=1),
            "reminder_minutes_before": None,
            "attendees": [],
            "resource_id": rid,
            "resource_seq": rseq,
            "busy_start": start,
            "busy_end": start + timedelta(hours=1),
            "resource_exclusive": False,
            "resource_version": version,
        }

    a_fields, b_fields = await fields(alice), await fields(bob)
    async with db.pool.acquire() as a, db.pool.acquire() as b:
        a_tx = a.transaction()
        await a_tx.start()
        try:
            made = await store.create_resource_booking(
                a, actor_id=a_fields["user_id"], reminder_due_at=None, capacity=2, locked=True, **a_fields
            )
            assert made is not None  # 1 of 2 taken: A takes the last seat, holds the lock, not committed
            b_pid = b.get_server_pid()
            b_create = asyncio.ensure_future(
                store.create_resource_booking(
                    b, actor_id=b_fields["user_id"], reminder_due_at=None, capacity=2, locked=True, **b_fields
                )
            )

            async def b_waits_on_a_lock() -> bool:
                async with db.connect() as probe:
                    kind = await probe.fetchval(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", b_pid
                    )
                return kind == "Lock"

            await wait_for(b_waits_on_a_lock, what="the second writer to wait on the resource's row lock")
            assert not b_create.done()
            await a_tx.commit()
            refused = await asyncio.wait_for(b_create, 5)
            assert refused is None  # B counted after A's commit: the resource is full
        finally:
            with contextlib.suppress(asyncpg.InterfaceError):  # A is already committed
                await a_tx.rollback()
    status, full = await book(client, bob, body(140.5, 141.5, resourceId=room["id"]))
    assert status == 409 and full["detail"] == "resource full"


async def test_an_idempotent_resource_create_replays_the_first_answer(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    room = await new_resource(client, admin, capacity=4)
    payload = body(160, 161, resourceId=room["id"])
    headers = {**auth(user), "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await client.post("/api/booking", json=payload, headers=headers)
    again = await client.post("/api/booking", json=payload, headers=headers)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await client.post("/api/booking", json={**payload, "title": "other"}, headers=headers)
    assert other.status == 422
    url = f"/api/resources/{room['id']}/busy?from={at(159)}&to={at(162)}"
    assert len((await (await client.get(url, headers=auth(user))).json())["data"]) == 1


async def test_idle_resource_actors_stop_like_user_actors(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    from server.web.keys import AUTH, RESOURCE_REGISTRY
    from tests.support import unique_email, wait_for

    client = await make_client(actor_idle_seconds=0.2)
    email = unique_email("idle-admin")
    await client.app[AUTH].ensure_admin(email=email, password="admin password 123")
    login = await client.post("/api/auth/login", json={"email": email, "password": "admin password 123"})
    admin = await login.json()
    room = await new_resource(client, admin)
    status, _ = await book(client, admin, body(170, 171, resourceId=room["id"]))
    assert status == 201
    registry = client.app[RESOURCE_REGISTRY]
    rid = uuid.UUID(room["id"])
    assert rid in registry and registry.get(rid).name == f"actor:resource:{rid}"

    async def stopped() -> bool:
        return rid not in registry

    await wait_for(stopped, what="the idle resource actor to stop")


# --- the migration ------------------------------------------------------------------------------


def test_the_migration_keeps_existing_bookings_as_personal_ones(backing_services: tuple[str, str]) -> None:
    """0006 with a user and a booking, then 0007: the booking is intact and personal (no resource, no
    attendees); back to 0006 and up again keeps it too."""
    from storage import migrate
    from tests.support import create_database, drop_database

    admin_url = backing_services[0]
    name = f"booking_res_mig_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(create_database(admin_url, name))
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    start = datetime(2031, 5, 1, 9, tzinfo=UTC)

    async def seed() -> uuid.UUID:
        conn = await asyncpg.connect(plain)
        try:
            user_id, seq = await conn.fetchrow(
                "INSERT INTO users (email, name, password_hash) VALUES ('m@example.com', 'M', 'x') "
                "RETURNING id, seq"
            )
            booking_id: uuid.UUID = await conn.fetchval(
                "INSERT INTO bookings (user_id, user_seq, title, start_time, end_time) "
                "VALUES ($1, $2, 'Before resources', $3, $4) RETURNING id",
                user_id,
                seq,
                start,
                start + timedelta(hours=1),
            )
            return booking_id
        finally:
            await conn.close()

    async def read(booking_id: uuid.UUID) -> dict[str, Any]:
        conn = await asyncpg.connect(plain)
        try:
            row = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1", booking_id)
            assert row is not None
            return dict(row)
        finally:
            await conn.close()

    try:
        migrate.upgrade(url, "0007_webhooks")
        booking_id = asyncio.run(seed())
        before = asyncio.run(read(booking_id))
        migrate.upgrade(url)
        after = asyncio.run(read(booking_id))
        assert {k: after[k] for k in before} == before
        assert (
            after["resource_id"] is None
            and after["busy_start"] is None
            and after["resource_exclusive"] is False
        )
        assert after["attendees"] == "[]"  # jsonb as text: this connection has no JSON codec
        migrate.downgrade(url, "0007_webhooks")
        assert asyncio.run(read(booking_id)) == before
        migrate.upgrade(url)
        assert asyncio.run(read(booking_id))["title"] == "Before resources"
    finally:
        asyncio.run(drop_database(admin_url, name))
