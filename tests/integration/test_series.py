"""Recurring series over REST against real PostgreSQL: expansion in the series' zone, all-or-nothing and
skip, resources, scopes of edits and deletes, reminders per occurrence, hostile rules."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Client, Registrar, auth
from tests.integration.test_resources import new_resource
from tests.ws_support import ask, events_until_pong, next_frame

BERLIN = ZoneInfo("Europe/Berlin")


def iso(d: datetime) -> str:
    return d.astimezone(UTC).isoformat().replace("+00:00", "Z")


def spring_forward_monday() -> date:
    """A Monday two weeks before the next spring DST change in Berlin that is at least 3 weeks away."""
    today = datetime.now(UTC).date()
    for year in range(today.year, today.year + 3):
        last_sunday = max(date(year, 3, d) for d in range(25, 32) if date(year, 3, d).weekday() == 6)
        if last_sunday - today > timedelta(days=21):
            return last_sunday - timedelta(days=13)
    raise AssertionError("no DST change found")  # pragma: no cover


def local(day: date, hour: int, minute: int = 0, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.combine(day, time(hour, minute), zone)


def series_body(
    day: date, *, rrule: str = "FREQ=WEEKLY;BYDAY=MO;COUNT=4", hour: int = 9, **extra: Any
) -> dict[str, Any]:
    start = local(day, hour)
    recurrence = {"rrule": rrule, "timeZone": "Europe/Berlin", **extra.pop("recurrence", {})}
    return {
        "title": "Stand-up",
        "startTime": iso(start),
        "endTime": iso(start + timedelta(minutes=30)),
        "recurrence": recurrence,
        **extra,
    }


async def create_series(client: Client, user: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    assert resp.headers["Location"] == f"/api/series/{data['id']}"
    return data


async def count_rows(db_conn: Any, user_id: str) -> tuple[int, int]:
    bookings = await db_conn.fetchval("SELECT count(*) FROM bookings WHERE user_id = $1", uuid.UUID(user_id))
    series = await db_conn.fetchval(
        "SELECT count(*) FROM booking_series WHERE user_id = $1", uuid.UUID(user_id)
    )
    return bookings, series


async def test_weekly_series_stays_at_local_time_across_dst(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    monday = spring_forward_monday()
    series = await create_series(client, user, series_body(monday))
    starts = [o["startTime"] for o in series["occurrences"]]
    expected = [iso(local(monday + timedelta(weeks=i), 9)) for i in range(4)]
    assert starts == expected
    # Two before the change at 08:00Z, two after at 07:00Z: 09:00 local throughout.
    assert [s[11:16] for s in starts] == ["08:00", "08:00", "07:00", "07:00"]
    for o in series["occurrences"]:
        assert o["seriesId"] == series["id"]
        assert o["occurrenceStart"] == o["startTime"]
    assert series["rrule"] == "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;COUNT=4"
    assert series["skipped"] == []
    fetched = await client.get(f"/api/series/{series['id']}", headers=auth(user))
    assert fetched.status == 200
    assert fetched.headers["ETag"] == f'"{series["version"]}"'
    assert [o["id"] for o in (await fetched.json())["occurrences"]] == [
        o["id"] for o in series["occurrences"]
    ]
    # Occurrences are real bookings: listed, and each has its own reminder at its own time.
    listed = await client.get("/api/booking", headers=auth(user))
    assert {b["id"] for b in (await listed.json())["data"]} == {o["id"] for o in series["occurrences"]}
    dues = await db_conn.fetch(
        "SELECT b.start_time, r.due_at FROM reminders r JOIN bookings b ON b.id = r.booking_id "
        "WHERE b.series_id = $1 AND r.state = 'pending' ORDER BY b.start_time",
        uuid.UUID(series["id"]),
    )
    assert [r["start_time"] - r["due_at"] for r in dues] == [timedelta(minutes=10)] * 4


async def test_a_conflicting_occurrence_refuses_the_whole_series(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    monday = spring_forward_monday()
    third = local(monday + timedelta(weeks=2), 9, 15)
    resp = await client.post(
        "/api/booking",
        json={"title": "Dentist", "startTime": iso(third), "endTime": iso(third + timedelta(hours=1))},
        headers=auth(user),
    )
    blocker = (await resp.json())["id"]
    before = await count_rows(db_conn, user["user"]["id"])
    resp = await client.post("/api/booking", json=series_body(monday), headers=auth(user))
    assert resp.status == 409
    problem = await resp.json()
    assert problem["conflicts"] == [
        {
            "occurrenceStart": iso(local(monday + timedelta(weeks=2), 9)),
            "startTime": iso(local(monday + timedelta(weeks=2), 9)),
            "endTime": iso(local(monday + timedelta(weeks=2), 9, 30)),
            "conflictingIds": [blocker],
        }
    ]
    assert await count_rows(db_conn, user["user"]["id"]) == before  # nothing written

    skipped = await create_series(client, user, series_body(monday, conflictPolicy="skip"))
    assert len(skipped["occurrences"]) == 3
    assert [s["conflictingIds"] for s in skipped["skipped"]] == [[blocker]]
    assert iso(local(monday + timedelta(weeks=2), 9)) not in {o["startTime"] for o in skipped["occurrences"]}


async def test_series_on_a_resource_respects_capacity_and_its_window(
    client: Client, register: Registrar, admin: dict[str, Any], db_conn: Any
) -> None:
    room = await new_resource(client, admin, capacity=1, bufferAfterMinutes=15)
    alice, bob = await register(), await register()
    monday = spring_forward_monday()
    first = await create_series(client, alice, series_body(monday, resourceId=room["id"]))
    assert all(o["resourceId"] == room["id"] for o in first["occurrences"])
    # Bob's daily series at 09:40 meets Alice's buffer (09:30-09:45) on the Mondays only.
    start = local(monday, 9, 40)
    body = {
        "title": "Bob",
        "startTime": iso(start),
        "endTime": iso(start + timedelta(minutes=20)),
        "resourceId": room["id"],
        "recurrence": {"rrule": "FREQ=DAILY;COUNT=8", "timeZone": "Europe/Berlin"},
    }
    resp = await client.post("/api/booking", json=body, headers=auth(bob))
    assert resp.status == 409, await resp.text()
    conflicts = (await resp.json())["conflicts"]
    assert [c["startTime"] for c in conflicts] == [
        iso(local(monday, 9, 40)),
        iso(local(monday + timedelta(7), 9, 40)),
    ]
    got = await create_series(client, bob, {**body, "conflictPolicy": "skip"})
    assert len(got["occurrences"]) == 6
    overlaps = await db_conn.fetchval(
        "SELECT count(*) FROM bookings a JOIN bookings b ON a.id < b.id AND a.resource_id = b.resource_id "
        "AND tstzrange(a.busy_start, a.busy_end) && tstzrange(b.busy_start, b.busy_end) "
        "WHERE a.resource_id = $1",
        uuid.UUID(room["id"]),
    )
    assert overlaps == 0

    near = await new_resource(client, admin, maxAdvanceDays=20)
    resp = await client.post(
        "/api/booking",
        json=series_body(
            datetime.now(UTC).date() + timedelta(days=2), rrule="FREQ=WEEKLY;COUNT=5", resourceId=near["id"]
        ),
        headers=auth(alice),
    )
    assert resp.status == 400
    assert "booking window" in (await resp.json())["detail"]


async def test_capacity_counts_the_series_own_overlapping_buffers(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    desk = await new_resource(client, admin, capacity=2)
    users = [await register() for _ in range(3)]
    monday = spring_forward_monday()
    for u in users[:2]:
        await create_series(client, u, series_body(monday, resourceId=desk["id"]))
    resp = await client.post(
        "/api/booking", json=series_body(monday, resourceId=desk["id"]), headers=auth(users[2])
    )
    assert resp.status == 409
    assert len((await resp.json())["conflicts"]) == 4
    assert all(len(c["conflictingIds"]) == 2 for c in (await resp.json())["conflicts"])


async def test_editing_one_occurrence_is_an_exception(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    monday = spring_forward_monday()
    series = await create_series(client, user, series_body(monday))
    second = series["occurrences"][1]
    moved = local(monday + timedelta(weeks=1, days=1), 11)
    resp = await client.patch(
        f"/api/booking/{second['id']}",
        json={"startTime": iso(moved), "endTime": iso(moved + timedelta(minutes=30))},
        headers={**auth(user), "If-Match": '"1"'},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["startTime"] == iso(moved)
    assert body["occurrenceStart"] == second["occurrenceStart"]  # its RECURRENCE-ID stays
    after = await (await client.get(f"/api/series/{series['id']}", headers=auth(user))).json()
    assert after["version"] == series["version"] + 1

    third = series["occurrences"][2]
    resp = await client.delete(f"/api/booking/{third['id']}", headers=auth(user))
    assert resp.status == 204
    left = await (await client.get(f"/api/series/{series['id']}", headers=auth(user))).json()
    assert [o["id"] for o in left["occurrences"]] == [series["occurrences"][i]["id"] for i in (0, 1, 3)]
    states = await db_conn.fetch(
        "SELECT booking_id, state FROM reminders WHERE booking_id = ANY($1::uuid[])",
        [uuid.UUID(o["id"]) for o in series["occurrences"]],
    )
    assert {str(r["booking_id"]) for r in states} == {series["occurrences"][i]["id"] for i in (0, 1, 3)}
    assert {r["state"] for r in states} == {"pending"}


async def test_scope_all_and_following(client: Client, register: Registrar) -> None:
    user = await register()
    monday = spring_forward_monday()
    series = await create_series(client, user, series_body(monday, rrule="FREQ=WEEKLY;COUNT=6"))
    occ = series["occurrences"]
    stale = await client.patch(
        f"/api/booking/{occ[2]['id']}?scope=all",
        json={"title": "Daily"},
        headers={**auth(user), "If-Match": f'"{series["version"] + 5}"'},
    )
    assert stale.status == 412
    resp = await client.patch(
        f"/api/booking/{occ[2]['id']}?scope=all",
        json={"title": "Weekly sync"},
        headers={**auth(user), "If-Match": f'"{series["version"]}"'},
    )
    assert resp.status == 200, await resp.text()
    whole = await resp.json()
    assert whole["title"] == "Weekly sync"
    assert {o["title"] for o in whole["occurrences"]} == {"Weekly sync"}

    # This and the following at 10:00 local: a new series from the fourth on, the old one ends before it.
    fourth = whole["occurrences"][3]
    ten = local(monday + timedelta(weeks=3), 10)
    resp = await client.patch(
        f"/api/booking/{fourth['id']}?scope=following",
        json={"startTime": iso(ten), "endTime": iso(ten + timedelta(minutes=45))},
        headers=auth(user),
    )
    assert resp.status == 200, await resp.text()
    tail = await resp.json()
    assert tail["id"] != series["id"]
    assert [o["startTime"] for o in tail["occurrences"]] == [
        iso(local(monday + timedelta(weeks=w), 10)) for w in (3, 4, 5)
    ]
    assert all(o["occurrenceStart"] == o["startTime"] for o in tail["occurrences"])
    assert tail["rrule"].endswith("COUNT=3")
    head = await (await client.get(f"/api/series/{series['id']}", headers=auth(user))).json()
    assert len(head["occurrences"]) == 3
    assert "UNTIL=" in head["rrule"]
    assert [o["startTime"] for o in head["occurrences"]] == [
        iso(local(monday + timedelta(weeks=w), 9)) for w in (0, 1, 2)
    ]

    resp = await client.delete(
        f"/api/booking/{tail['occurrences'][1]['id']}?scope=following", headers=auth(user)
    )
    assert resp.status == 204
    shorter = await (await client.get(f"/api/series/{tail['id']}", headers=auth(user))).json()
    assert len(shorter["occurrences"]) == 1
    resp = await client.delete(f"/api/booking/{head['occurrences'][1]['id']}?scope=all", headers=auth(user))
    assert resp.status == 204
    assert (await client.get(f"/api/series/{series['id']}", headers=auth(user))).status == 404
    listed = await (await client.get("/api/booking", headers=auth(user))).json()
    assert [b["seriesId"] for b in listed["data"]] == [tail["id"]]


async def test_a_series_create_replays_with_its_idempotency_key(client: Client, register: Registrar) -> None:
    user = await register()
    body = series_body(spring_forward_monday())
    headers = {**auth(user), "Idempotency-Key": "series-1"}
    first = await client.post("/api/booking", json=body, headers=headers)
    second = await client.post("/api/booking", json=body, headers=headers)
    assert first.status == second.status == 201
    assert await first.read() == await second.read()
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = await client.post("/api/booking", json={**body, "title": "Other"}, headers=headers)
    assert other.status == 422


@pytest.mark.parametrize(
    ("recurrence", "needle"),
    [
        ({"rrule": "FREQ=SECONDLY;COUNT=3"}, "FREQ must be DAILY, WEEKLY or MONTHLY"),
        ({"rrule": "FREQ=DAILY;COUNT=100000"}, "COUNT must be from 1 to 366"),
        ({"rrule": "FREQ=DAILY;UNTIL=29991231T000000Z"}, "UNTIL is beyond the booking window"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=MO,XX;COUNT=3"}, "BYDAY takes weekdays"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=MO"}, "exactly one of COUNT or UNTIL"),
        ({"rrule": "FREQ=DAILY;COUNT=3;UNTIL=20270101T000000Z"}, "exactly one of COUNT or UNTIL"),
        ({"rrule": "FREQ=DAILY;COUNT=3;BYHOUR=9"}, "BYHOUR is not supported"),
        ({"rrule": "FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1;COUNT=2"}, "matches no day"),
        ({"rrule": "FREQ=DAILY;COUNT=400"}, "COUNT must be from 1 to 366"),
        ({"rrule": "FREQ=DAILY;UNTIL=20270101T090000"}, "must be in UTC"),
        ({"rrule": "FREQ=DAILY;COUNT=3", "timeZone": "Mars/Olympus"}, "IANA time zone"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=TU;COUNT=3"}, "first occurrence"),
        ({"rrule": "x" * 501}, "Length must be between 1 and 500"),
        ({"rrule": "FREQ=DAILY;COUNT=3", "exdates": ["2020-01-01T00:00:00Z"]}, "not an occurrence"),
        ({"rrule": 7}, "Not a valid string"),
        ({"rrule": "FREQ=DAILY;COUNT=3", "extra": 1}, "Unknown field"),
    ],
)
async def test_hostile_rules_are_400_and_write_nothing(
    client: Client, register: Registrar, db_conn: Any, recurrence: dict[str, Any], needle: str
) -> None:
    user = await register()
    body = series_body(spring_forward_monday())
    body["recurrence"] = {"timeZone": "Europe/Berlin", **recurrence}
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 400, await resp.text()
    assert needle in await resp.text()
    assert await count_rows(db_conn, user["user"]["id"]) == (0, 0)


async def test_huge_exdates_and_policy_without_rule_are_refused(client: Client, register: Registrar) -> None:
    user = await register()
    body = series_body(spring_forward_monday())
    body["recurrence"]["exdates"] = ["2030-01-01T00:00:00Z"] * 400
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 400
    assert "exdates" in await resp.text()
    body["recurrence"]["exdates"] = ["2030-01-01T00:00:00Z"] * 400_000  # ~10 MB
    payload = io.BytesIO(json.dumps(body).encode())
    resp = await client.post(
        "/api/booking", data=payload, headers={**auth(user), "Content-Type": "application/json"}
    )
    assert resp.status == 413
    single = series_body(spring_forward_monday(), conflictPolicy="skip")
    del single["recurrence"]
    resp = await client.post("/api/booking", json=single, headers=auth(user))
    assert resp.status == 400
    assert "conflictPolicy" in await resp.text()


async def test_scope_on_a_plain_booking_and_bad_scopes(client: Client, register: Registrar) -> None:
    user = await register()
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    resp = await client.post(
        "/api/booking",
        json={"title": "One-off", "startTime": iso(start), "endTime": iso(start + timedelta(hours=1))},
        headers=auth(user),
    )
    booking = await resp.json()
    resp = await client.patch(
        f"/api/booking/{booking['id']}?scope=all", json={"title": "x"}, headers=auth(user)
    )
    assert resp.status == 400
    assert "not one" in await resp.text()
    resp = await client.patch(
        f"/api/booking/{booking['id']}?scope=everything", json={"title": "x"}, headers=auth(user)
    )
    assert resp.status == 400
    resp = await client.delete(f"/api/booking/{booking['id']}?scope=following", headers=auth(user))
    assert resp.status == 400
    other = await register()
    assert (await client.get(f"/api/series/{uuid.uuid4()}", headers=auth(other))).status == 404


async def test_a_series_over_the_socket_emits_each_occurrence_then_the_summary(
    client: Client, register: Registrar
) -> None:
    user = await register()
    ws = await client.ws_connect(f"/ws/?token={user['accessToken']}")
    monday = spring_forward_monday()
    await ws.send_json({"event": "create-booking", "data": series_body(monday), "id": "s"})
    frames = [await next_frame(ws) for _ in range(6)]
    names = [f["event"] for f in frames]
    assert names == ["booking.created"] * 4 + ["series.created", "create-booking"]
    reply = frames[-1]["data"]
    assert [f["data"]["id"] for f in frames[:4]] == [o["id"] for o in reply["occurrences"]]
    assert frames[4]["data"]["occurrenceIds"] == [o["id"] for o in reply["occurrences"]]
    # One occurrence cancelled over the socket: its own event, then the series' new version.
    target = reply["occurrences"][1]["id"]
    await ws.send_json({"event": "update-booking", "data": {"id": target, "status": "cancelled"}, "id": "u"})
    frames = [await next_frame(ws) for _ in range(3)]
    assert [f["event"] for f in frames] == ["booking.updated", "series.updated", "update-booking"]
    assert frames[1]["data"] == {
        "id": reply["id"],
        "userId": user["user"]["id"],
        "version": reply["version"] + 1,
        "occurrenceIds": [target],
        "scope": "this",
    }
    bad = await ask(ws, "update-booking", {"id": target, "title": "x", "scope": "some"}, id="b")
    assert bad["data"]["status"] == 400
    await ws.send_json({"event": "delete-booking", "data": {"id": target, "scope": "all"}, "id": "d"})
    frames = await events_until_pong(ws)
    assert [f["event"] for f in frames] == ["booking.deleted"] * 4 + ["series.deleted", "delete-booking"]
    await ws.close()
