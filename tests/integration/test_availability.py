"""Availability over REST on real PostgreSQL and Redis: working hours (admin, versioned, enforced on
bookings, never cancelling any), users' own hours, open slots that can be booked as offered, the next
free slot across a closed weekend and a holiday, free/busy for several ids, and hostile input."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Client, Registrar, auth
from tests.integration.test_resources import new_resource

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS_9_TO_17 = [{"weekday": d, "start": "09:00", "end": "17:00"} for d in range(1, 6)]


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def next_weekday(weekday: int, *, weeks: int = 1) -> date:
    """A date of that ISO weekday at least `weeks` weeks ahead (far from every notice rule)."""
    today = datetime.now(BERLIN).date() + timedelta(weeks=weeks)
    return today + timedelta(days=(weekday - today.isoweekday()) % 7)


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=BERLIN)


async def put_hours(
    client: Client, admin: dict[str, Any], resource_id: str, payload: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    resp = await client.put(
        f"/api/resources/{resource_id}/hours", json=payload, headers={**auth(admin), **headers}
    )
    return resp.status, await resp.json()


async def get(
    client: Client, session: dict[str, Any], path: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"{path}?{urlencode(params)}", headers=auth(session))
    return resp.status, await resp.json()


async def book(client: Client, session: dict[str, Any], resource_id: str, start: str, end: str) -> int:
    payload = {"title": "Use", "startTime": start, "endTime": end, "resourceId": resource_id}
    resp = await client.post("/api/booking", json=payload, headers=auth(session))
    return resp.status


@pytest.fixture
async def room(client: Client, admin: dict[str, Any]) -> dict[str, Any]:
    resource = await new_resource(client, admin, timeZone="Europe/Berlin")
    status, _ = await put_hours(client, admin, resource["id"], {"weekly": WEEKDAYS_9_TO_17, "overrides": []})
    assert status == 200
    return resource


# --- working hours -----------------------------------------------------------------------------------


async def test_hours_are_versioned_with_the_resource_and_enforced_on_bookings(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    resource = await new_resource(client, admin, timeZone="Europe/Berlin")
    rid = resource["id"]
    status, hours = await get(client, user, f"/api/resources/{rid}/hours")
    assert status == 200 and hours["weekly"] is None and hours["overrides"] == []  # open around the clock

    monday = next_weekday(1)
    early = (z(local(monday, 7)), z(local(monday, 8)))
    assert await book(client, user, rid, *early) == 201  # made while open around the clock

    holiday = next_weekday(3)
    status, changed = await put_hours(
        client,
        admin,
        rid,
        {"weekly": WEEKDAYS_9_TO_17, "overrides": [{"date": holiday.isoformat(), "closed": True}]},
        **{"If-Match": f'"{resource["version"]}"'},
    )
    assert status == 200, changed
    assert changed["version"] == resource["version"] + 1
    assert changed["overrides"] == [{"date": holiday.isoformat(), "intervals": []}]
    # The 07:00 booking stays, and the admin is told it is now outside the hours.
    assert [b["startTime"] for b in changed["outsideHours"]] == [early[0]]
    read = await client.get(f"/api/resources/{rid}", headers=auth(user))
    assert read.headers["ETag"] == f'"{changed["version"]}"'

    stale, problem = await put_hours(
        client, admin, rid, {"weekly": None}, **{"If-Match": f'"{resource["version"]}"'}
    )
    assert stale == 412, problem

    resp = await client.post(
        "/api/booking",
        json={
            "title": "x",
            "startTime": z(local(monday, 16)),
            "endTime": z(local(monday, 18)),
            "resourceId": rid,
        },
        headers=auth(user),
    )
    assert resp.status == 400
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "startTime"
    assert (
        "Mon 09:00-17:00" in problem["errors"][0]["message"]
        and "Europe/Berlin" in problem["errors"][0]["message"]
    )
    resp = await client.post(
        "/api/booking",
        json={
            "title": "x",
            "startTime": z(local(holiday, 10)),
            "endTime": z(local(holiday, 11)),
            "resourceId": rid,
        },
        headers=auth(user),
    )
    assert resp.status == 400 and f"on {holiday}: closed" in (await resp.json())["detail"]
    assert await book(client, user, rid, z(local(monday, 9)), z(local(monday, 17))) == 201

    # Moving a booking outside the hours is refused the same way.
    resp = await client.post(
        "/api/booking",
        json={
            "title": "m",
            "startTime": z(local(monday + timedelta(days=1), 10)),
            "endTime": z(local(monday + timedelta(days=1), 11)),
            "resourceId": rid,
        },
        headers=auth(user),
    )
    created = await resp.json()
    assert resp.status == 201, created
    moved = await client.patch(
        f"/api/booking/{created['id']}",
        json={
            "startTime": z(local(monday + timedelta(days=1), 20)),
            "endTime": z(local(monday + timedelta(days=1), 21)),
        },
        headers=auth(user),
    )
    assert moved.status == 400 and (await moved.json())["errors"][0]["field"] == "startTime"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"weekly": [{"weekday": 0, "start": "09:00", "end": "17:00"}]}, "weekly.0.weekday"),
        ({"weekly": [{"weekday": 8, "start": "09:00", "end": "17:00"}]}, "weekly.0.weekday"),
        ({"weekly": [{"weekday": 1, "start": "9:00", "end": "17:00"}]}, "weekly.0.start"),
        ({"weekly": [{"weekday": 1, "start": "17:00", "end": "09:00"}]}, "weekly.0.end"),
        ({"weekly": [{"weekday": 1, "start": "24:00", "end": "24:00"}]}, "weekly.0.end"),
        ({"weekly": [{"weekday": 1, "start": "09:00", "end": "25:00"}]}, "weekly.0.end"),
        (
            {
                "weekly": [
                    {"weekday": 1, "start": "09:00", "end": "12:00"},
                    {"weekday": 1, "start": "11:00", "end": "13:00"},
                ]
            },
            "weekly",
        ),
        ({"weekly": [], "overrides": [{"date": "2027-02-30", "closed": True}]}, "overrides.0.date"),
        ({"weekly": [], "overrides": [{"date": "2027-12-24"}]}, "overrides.0.intervals"),
        (
            {
                "weekly": [],
                "overrides": [
                    {"date": "2027-12-24", "closed": True, "intervals": [{"start": "09:00", "end": "10:00"}]}
                ],
            },
            "overrides.0.intervals",
        ),
        (
            {
                "weekly": [],
                "overrides": [{"date": "2027-12-24", "closed": True}, {"date": "2027-12-24", "closed": True}],
            },
            "overrides",
        ),
        ({"weekly": [{"weekday": 1, "start": "09:00", "end": "17:00", "x": 1}]}, "weekly.0.x"),
        ({}, "weekly"),
        ({"weekly": [{"weekday": 1, "start": "09:00", "end": "17:00"}] * 85}, "weekly"),
        (
            {
                "weekly": [],
                "overrides": [{"date": f"2027-01-{d:02d}", "closed": True} for d in range(1, 32)] * 12,
            },
            "overrides",
        ),
    ],
)
async def test_bad_hours_are_400_and_change_nothing(
    client: Client, admin: dict[str, Any], room: dict[str, Any], payload: dict[str, Any], field: str
) -> None:
    before = await (await client.get(f"/api/resources/{room['id']}/hours", headers=auth(admin))).json()
    status, problem = await put_hours(client, admin, room["id"], payload)
    assert status == 400, problem
    assert field in {e["field"] for e in problem["errors"]}, problem
    after = await (await client.get(f"/api/resources/{room['id']}/hours", headers=auth(admin))).json()
    assert after == before


async def test_only_admins_set_hours_and_unknown_resources_are_404(
    client: Client, register: Registrar, admin: dict[str, Any], room: dict[str, Any]
) -> None:
    user = await register()
    status, _ = await put_hours(client, user, room["id"], {"weekly": None})
    assert status == 403
    status, _ = await put_hours(client, admin, str(uuid.uuid4()), {"weekly": None})
    assert status == 404
    assert (await client.get(f"/api/resources/{uuid.uuid4()}/hours", headers=auth(user))).status == 404


# --- slots -------------------------------------------------------------------------------------------


async def test_every_slot_offered_can_be_booked_and_then_is_no_longer_offered(
    client: Client, register: Registrar, room: dict[str, Any]
) -> None:
    user, other = await register(), await register()
    monday = next_weekday(1)
    params = {
        "resourceId": room["id"],
        "from": z(local(monday, 0)),
        "to": z(local(monday + timedelta(days=1), 0)),
        "duration": 60,
    }
    status, found = await get(client, user, "/api/availability/slots", **params)
    assert status == 200, found
    starts = [s["localStart"] for s in found["data"]]
    assert starts == [local(monday, h).isoformat() for h in range(9, 17)]
    assert found["timeZone"] == "Europe/Berlin" and found["stepMinutes"] == 60

    first = found["data"][0]
    assert await book(client, other, room["id"], first["start"], first["end"]) == 201
    _, again = await get(client, user, "/api/availability/slots", **params)
    assert first["start"] not in [s["start"] for s in again["data"]]
    for slot in again["data"][:3]:  # each one offered is bookable as offered
        assert await book(client, user, room["id"], slot["start"], slot["end"]) == 201

    _, labelled = await get(
        client, user, "/api/availability/slots", **{**params, "timeZone": "America/New_York"}
    )
    assert labelled["timeZone"] == "America/New_York"
    assert labelled["data"][0]["localStart"].endswith("-05:00") or labelled["data"][0]["localStart"].endswith(
        "-04:00"
    )


async def test_slots_honour_capacity_buffers_notice_and_your_own_bookings(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user, a, b = await register(), await register(), await register()
    monday = next_weekday(1)
    cls = await new_resource(client, admin, timeZone="Europe/Berlin", capacity=2, bufferAfterMinutes=30)
    for who in (a, b):  # both seats 10:00-11:00 (busy until 11:30 with the buffer)
        assert await book(client, who, cls["id"], z(local(monday, 10)), z(local(monday, 11))) == 201
    # Your own booking elsewhere at 14:00 counts too: you cannot overlap yourself.
    resp = await client.post(
        "/api/booking",
        json={"title": "mine", "startTime": z(local(monday, 14)), "endTime": z(local(monday, 15))},
        headers=auth(user),
    )
    assert resp.status == 201
    params = {
        "resourceId": cls["id"],
        "from": z(local(monday, 9)),
        "to": z(local(monday, 16)),
        "duration": 60,
        "step": 30,
    }
    _, found = await get(client, user, "/api/availability/slots", **params)
    starts = {datetime.fromisoformat(s["localStart"]).strftime("%H:%M") for s in found["data"]}
    # 09:00 would end at 10:00 but its 30-minute buffer reaches into the full hour.
    assert "09:00" not in starts and "08:30" not in starts
    assert not starts & {"09:30", "10:00", "10:30", "11:00"}
    assert "11:30" in starts and "12:00" in starts
    assert not starts & {"13:30", "14:00", "14:30"}  # your own 14:00-15:00
    assert "15:00" in starts


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"duration": 60, "from": "2027-01-01T00:00:00Z", "to": "2027-03-01T00:00:00Z"}, 400, "to"),
        ({"duration": 60, "from": "2027-01-02T00:00:00Z", "to": "2027-01-01T00:00:00Z"}, 400, "to"),
        ({"duration": 0, "from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z"}, 400, "duration"),
        (
            {"duration": 60, "step": 0, "from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z"},
            400,
            "step",
        ),
        (
            {"duration": 60, "step": 1441, "from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z"},
            400,
            "step",
        ),
        ({"duration": 60, "from": "2027-01-01T00:00:00", "to": "2027-01-02T00:00:00Z"}, 400, "from"),
        (
            {
                "duration": 60,
                "from": "2027-01-01T00:00:00Z",
                "to": "2027-01-02T00:00:00Z",
                "timeZone": "Mars/Olympus",
            },
            400,
            "timeZone",
        ),
        (
            {"duration": 60, "from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z", "nope": 1},
            400,
            "nope",
        ),
        ({"duration": "x", "from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z"}, 400, "duration"),
    ],
)
async def test_bad_slot_queries_are_400(
    client: Client, register: Registrar, room: dict[str, Any], params: dict[str, Any], status: int, field: str
) -> None:
    user = await register()
    got, problem = await get(client, user, "/api/availability/slots", resourceId=room["id"], **params)
    assert got == status, problem
    assert field in {e["field"] for e in problem["errors"]}, problem


async def test_slots_of_an_unknown_or_retired_resource(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    params = {"from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z", "duration": 60}
    status, _ = await get(client, user, "/api/availability/slots", resourceId=str(uuid.uuid4()), **params)
    assert status == 404
    retired = await new_resource(client, admin)
    assert (await client.delete(f"/api/resources/{retired['id']}", headers=auth(admin))).status == 204
    status, _ = await get(client, user, "/api/availability/slots", resourceId=retired["id"], **params)
    assert status == 409
    status, _ = await get(client, user, "/api/availability/next", resourceId=retired["id"], duration=60)
    assert status == 409


# --- next ----------------------------------------------------------------------------------------------


async def test_next_crosses_a_closed_weekend_and_a_holiday(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user, other = await register(), await register()
    resource = await new_resource(client, admin, timeZone="Europe/Berlin")
    friday = next_weekday(5)
    monday = friday + timedelta(days=3)
    status, _ = await put_hours(
        client,
        admin,
        resource["id"],
        {"weekly": WEEKDAYS_9_TO_17, "overrides": [{"date": monday.isoformat(), "closed": True}]},
    )
    assert status == 200
    # Friday afternoon is taken from 15:00: a two-hour slot after 14:00 Friday is Tuesday 09:00.
    assert await book(client, other, resource["id"], z(local(friday, 15)), z(local(friday, 17))) == 201
    status, found = await get(
        client,
        user,
        "/api/availability/next",
        resourceId=resource["id"],
        duration=120,
        step=30,
        after=z(local(friday, 14)),
    )
    assert status == 200, found
    assert found["slot"]["localStart"] == local(monday + timedelta(days=1), 9).isoformat()
    assert await book(client, user, resource["id"], found["slot"]["start"], found["slot"]["end"]) == 201


async def test_next_is_null_when_nothing_is_open_in_the_window(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    resource = await new_resource(client, admin, maxAdvanceDays=10)
    status, _ = await put_hours(
        client, admin, resource["id"], {"weekly": [], "overrides": []}
    )  # closed every day
    assert status == 200
    status, found = await get(client, user, "/api/availability/next", resourceId=resource["id"], duration=30)
    assert status == 200 and found["slot"] is None


# --- users' own hours and free/busy ---------------------------------------------------------------------


async def test_your_own_availability_and_freebusy_for_several_ids(
    client: Client, register: Registrar, admin: dict[str, Any], room: dict[str, Any]
) -> None:
    alice, bob = await register(), await register()
    status, mine = await get(client, alice, "/api/users/me/availability")
    assert status == 200 and mine["weekly"] is None and mine["version"] == 0
    resp = await client.put(
        "/api/users/me/availability",
        json={"timeZone": "Europe/Berlin", "weekly": [{"weekday": 1, "start": "10:00", "end": "12:00"}]},
        headers=auth(alice),
    )
    assert resp.status == 200 and resp.headers["ETag"] == '"1"'
    bad = await client.put(
        "/api/users/me/availability", json={"timeZone": "Nowhere/Else", "weekly": None}, headers=auth(alice)
    )
    assert bad.status == 400 and (await bad.json())["errors"][0]["field"] == "timeZone"
    stale = await client.put(
        "/api/users/me/availability",
        json={"timeZone": "UTC", "weekly": None},
        headers={**auth(alice), "If-Match": '"0"'},
    )
    assert stale.status == 412

    monday = next_weekday(1)
    assert await book(client, bob, room["id"], z(local(monday, 9)), z(local(monday, 10))) == 201
    resp = await client.post(
        "/api/booking",
        json={"title": "private", "startTime": z(local(monday, 10, 30)), "endTime": z(local(monday, 11))},
        headers=auth(alice),
    )
    assert resp.status == 201
    status, fb = await get(
        client,
        bob,
        "/api/freebusy",
        resourceIds=room["id"],
        userIds=f"{alice['user']['id']},{bob['user']['id']}",
        **{"from": z(local(monday, 8)), "to": z(local(monday, 13))},
    )
    assert status == 200, fb
    (res,) = fb["resources"]
    assert res["id"] == room["id"]
    # Closed until 09:00, booked 09:00-10:00 (merged into one busy stretch), open after.
    assert res["busy"] == [{"start": z(local(monday, 8)), "end": z(local(monday, 10))}]
    by_user = {u["id"]: u["busy"] for u in fb["users"]}
    # Alice: outside her hours before 10:00 and after 12:00, and her own 10:30-11:00; no titles anywhere.
    assert by_user[alice["user"]["id"]] == [
        {"start": z(local(monday, 8)), "end": z(local(monday, 10))},
        {"start": z(local(monday, 10, 30)), "end": z(local(monday, 11))},
        {"start": z(local(monday, 12)), "end": z(local(monday, 13))},
    ]
    assert by_user[bob["user"]["id"]] == [{"start": z(local(monday, 9)), "end": z(local(monday, 10))}]
    assert "private" not in str(fb) and "Use" not in str(fb)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 400),
        ({"resourceIds": "not-a-uuid"}, 400),
        ({"userIds": ",".join(str(uuid.uuid4()) for _ in range(51))}, 400),
        ({"resourceIds": str(uuid.uuid4())}, 404),
        ({"userIds": str(uuid.uuid4())}, 404),
    ],
)
async def test_bad_freebusy_queries(
    client: Client, register: Registrar, params: dict[str, Any], status: int
) -> None:
    user = await register()
    got, problem = await get(
        client,
        user,
        "/api/freebusy",
        **params,
        **{"from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z"},
    )
    assert got == status, problem
    wide, problem = await get(
        client,
        user,
        "/api/freebusy",
        userIds=user["user"]["id"],
        **{"from": "2027-01-01T00:00:00Z", "to": "2027-03-01T00:00:00Z"},
    )
    assert wide == 400, problem


async def test_hours_opened_by_another_process_take_effect_at_once(
    make_client: Callable[..., Awaitable[Client]],
    register: Registrar,
    admin: dict[str, Any],
    room: dict[str, Any],
) -> None:
    """A resource actor refuses on the row it read earlier only after reading it again: hours widened after
    it read the row (by this process or any other: the service writes PostgreSQL, not the actor's copy)
    are honoured by the next booking."""
    other_process = await make_client()
    user = await register()
    monday = next_weekday(1)
    evening = (z(local(monday, 18)), z(local(monday, 19)))
    assert await book(other_process, user, room["id"], *evening) == 400  # its actor now holds the row
    longer = [{"weekday": d, "start": "09:00", "end": "20:00"} for d in range(1, 6)]
    status, _ = await put_hours(other_process, admin, room["id"], {"weekly": longer})
    assert status == 200
    assert await book(other_process, user, room["id"], *evening) == 201


@pytest.mark.parametrize("capacity", [1, 2, 3])
async def test_full_spans_merged_in_postgresql_match_the_rules(
    client: Client, register: Registrar, admin: dict[str, Any], capacity: int
) -> None:
    """storage.availability.resource_full (a sweep in SQL) against actors.domain.availability.full_spans (the
    rules the property tests check) on random overlapping busy ranges, back to back ones included."""
    import random

    from actors.domain.availability import full_spans
    from server.web.keys import DB
    from storage import availability as store

    owner = await register()
    resource = await new_resource(client, admin, capacity=capacity)
    rng = random.Random(capacity)
    base = datetime(2031, 1, 6, tzinfo=UTC)
    spans = []
    for _ in range(120):
        s = base + timedelta(minutes=15 * rng.randrange(0, 400))
        spans.append((s, s + timedelta(minutes=15 * rng.randrange(1, 12))))
    async with client.app[DB].connect() as conn:
        rid = uuid.UUID(resource["id"])
        seq = await conn.fetchval("SELECT seq FROM resources WHERE id = $1", rid)
        await conn.executemany(
            "INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, resource_id, "
            "resource_seq, busy_start, busy_end) VALUES ($1, $2, 'x', $3, $4, $5, $6, $3, $4)",
            [
                # a user_seq of its own per row, so the owner's no-overlap rule stays out of the way
                (uuid.UUID(owner["user"]["id"]), 10**12 + 1000 * capacity + n, s, e, rid, seq)
                for n, (s, e) in enumerate(spans)
            ],
        )
        window = (base, base + timedelta(days=5))
        got = await store.resource_full(
            conn, resource_seq=seq, capacity=capacity, start=window[0], end=window[1]
        )
    assert got == full_spans(spans, capacity)
    assert got  # the data does fill the resource somewhere
