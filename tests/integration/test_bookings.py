"""Bookings over REST against real PostgreSQL: rules, hostile input, idempotency, ETags, audit."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conftest import Client, Registrar, auth


def slot(hours_from_now: float, length_hours: float = 1.0) -> tuple[str, str]:
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours_from_now)
    return base.isoformat().replace("+00:00", "Z"), (
        base + timedelta(hours=length_hours)
    ).isoformat().replace("+00:00", "Z")


def booking_body(hours: float = 24, length: float = 1, **extra: Any) -> dict[str, Any]:
    start, end = slot(hours, length)
    return {"title": "Dentist", "startTime": start, "endTime": end, **extra}


async def create(client: Client, session: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = await client.post("/api/booking", json=booking_body(**kw), headers=auth(session))
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def test_create_returns_201_with_location_etag_and_defaults(
    client: Client, register: Registrar
) -> None:
    user = await register()
    resp = await client.post("/api/booking", json=booking_body(location="Room 1"), headers=auth(user))
    assert resp.status == 201
    body = await resp.json()
    assert resp.headers["Location"] == f"/api/booking/{body['id']}"
    assert resp.headers["ETag"] == '"1"'
    assert body["userId"] == user["user"]["id"]
    assert body["status"] == "scheduled"
    assert body["reminderMinutesBefore"] == 10
    assert body["reminderSentAt"] is None
    assert body["location"] == "Room 1"
    assert body["startTime"].endswith("Z")
    fetched = await client.get(
        body["Location"] if "Location" in body else resp.headers["Location"], headers=auth(user)
    )
    assert (await fetched.json()) == body


async def test_offsets_are_normalised_to_utc(client: Client, register: Registrar) -> None:
    user = await register()
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    local = start.astimezone(timezone(timedelta(hours=5, minutes=30)))
    body = {"title": "x", "startTime": local.isoformat(), "endTime": (local + timedelta(hours=1)).isoformat()}
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 201
    assert (await resp.json())["startTime"] == start.isoformat().replace("+00:00", "Z")


async def test_null_reminder_means_none(client: Client, register: Registrar) -> None:
    user = await register()
    body = await create(client, user, reminderMinutesBefore=None)
    assert body["reminderMinutesBefore"] is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(startTime=b["startTime"].rstrip("Z")), "startTime"),
        (lambda b: b.update(endTime=b["startTime"]), "endTime"),
        (lambda b: b.update(startTime=slot(-2)[0], endTime=slot(-1)[0]), "startTime"),
        (lambda b: b.update(endTime=slot(24, 24 * 8)[1]), "endTime"),
        (lambda b: b.update(startTime="9999-01-01T00:00:00Z", endTime="9999-01-01T01:00:00Z"), "startTime"),
        (lambda b: b.update(startTime="tomorrow"), "startTime"),
        (lambda b: b.update(startTime=12345), "startTime"),
        (lambda b: b.update(title=""), "title"),
        (lambda b: b.update(title="x" * 256), "title"),
        (lambda b: b.update(title=["array"]), "title"),
        (lambda b: b.pop("title"), "title"),
        (lambda b: b.update(reminderMinutesBefore=-1), "reminderMinutesBefore"),
        (lambda b: b.update(reminderMinutesBefore=10081), "reminderMinutesBefore"),
        (lambda b: b.update(reminderMinutesBefore="10"), "reminderMinutesBefore"),
        (lambda b: b.update(reminderMinutesBefore=1.5), "reminderMinutesBefore"),
        # userId is booking on behalf of a user now: 403 for non-admins (tests/integration/test_resources.py).
        (lambda b: b.update(status="completed"), "status"),
        (lambda b: b.update(version=7), "version"),
        (lambda b: b.update(reminderSentAt="2030-01-01T00:00:00Z"), "reminderSentAt"),
        (lambda b: b.update(id=str(uuid.uuid4())), "id"),
    ],
)
async def test_create_rejects_invalid_input_and_writes_nothing(
    client: Client, register: Registrar, mutate: Any, field: str
) -> None:
    user = await register()
    body = booking_body()
    mutate(body)
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert resp.content_type == "application/problem+json"
    assert field in [e["field"] for e in problem["errors"]]
    listing = await (await client.get("/api/booking", headers=auth(user))).json()
    assert listing["meta"]["total"] == 0


@pytest.mark.parametrize(("field", "limit"), [("description", 5000), ("location", 500), ("notes", 5000)])
async def test_text_length_limits_from_the_readme(
    client: Client, register: Registrar, field: str, limit: int
) -> None:
    user = await register()
    too_long = await client.post(
        "/api/booking", json=booking_body(hours=30, **{field: "x" * (limit + 1)}), headers=auth(user)
    )
    assert too_long.status == 400
    assert [e["field"] for e in (await too_long.json())["errors"]] == [field]
    at_limit = await create(client, user, hours=30, **{field: "y" * limit})
    assert at_limit[field] == "y" * limit
    url = f"/api/booking/{at_limit['id']}"
    patch = await client.patch(url, json={field: "z" * (limit + 1)}, headers=auth(user))
    assert patch.status == 400
    assert (await (await client.get(url, headers=auth(user))).json())[field] == "y" * limit


async def test_ten_megabyte_title_is_413(client: Client, register: Registrar) -> None:
    user = await register()
    payload = json.dumps(booking_body(title="x" * (10 * 1024 * 1024))).encode()
    resp = await client.post(
        "/api/booking", data=io.BytesIO(payload), headers={**auth(user), "Content-Type": "application/json"}
    )
    assert resp.status == 413


async def test_requires_auth(client: Client) -> None:
    assert (await client.post("/api/booking", json=booking_body())).status == 401
    assert (await client.get("/api/booking")).status == 401


async def test_overlap_is_409_naming_the_conflict_and_back_to_back_is_fine(
    client: Client, register: Registrar
) -> None:
    user = await register()
    first = await create(client, user, hours=48, length=2)
    inside = await client.post("/api/booking", json=booking_body(hours=49, length=2), headers=auth(user))
    assert inside.status == 409
    problem = await inside.json()
    assert problem["conflictingId"] == first["id"]
    assert first["id"] in problem["detail"]
    # Half-open intervals: starting exactly when the other ends does not overlap.
    after = {"title": "next", "startTime": first["endTime"], "endTime": slot(51)[0]}
    assert (await client.post("/api/booking", json=after, headers=auth(user))).status == 201
    # Another user may book the same slot.
    other = await register()
    await create(client, other, hours=48, length=2)


async def test_cancelled_bookings_free_their_slot(client: Client, register: Registrar) -> None:
    user = await register()
    first = await create(client, user, hours=30)
    resp = await client.patch(
        f"/api/booking/{first['id']}/status", json={"status": "cancelled"}, headers=auth(user)
    )
    assert resp.status == 200
    await create(client, user, hours=30)


async def test_status_transitions(client: Client, register: Registrar) -> None:
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}/status"
    assert (await client.patch(url, json={"status": "in-progress"}, headers=auth(user))).status == 200
    assert (await client.patch(url, json={"status": "scheduled"}, headers=auth(user))).status == 409
    assert (await client.patch(url, json={"status": "completed"}, headers=auth(user))).status == 200
    assert (await client.patch(url, json={"status": "cancelled"}, headers=auth(user))).status == 409
    assert (await client.patch(url, json={"status": "done"}, headers=auth(user))).status == 400
    assert (
        await client.patch(f"/api/booking/{b['id']}", json={"title": "x"}, headers=auth(user))
    ).status == 409


async def test_get_carries_the_version_as_etag(client: Client, register: Registrar) -> None:
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}"
    first = await client.get(url, headers=auth(user))
    assert first.headers["ETag"] == '"1"'
    await client.patch(url, json={"title": "Moved"}, headers=auth(user))
    second = await client.get(url, headers=auth(user))
    assert second.headers["ETag"] == f'"{(await second.json())["version"]}"' == '"2"'


async def test_status_patch_honours_if_match(client: Client, register: Registrar) -> None:
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}"
    await client.patch(url, json={"title": "Moved"}, headers=auth(user))  # now version 2
    stale = await client.patch(
        url + "/status", json={"status": "cancelled"}, headers={**auth(user), "If-Match": '"1"'}
    )
    assert stale.status == 412
    assert stale.content_type == "application/problem+json"
    assert (await (await client.get(url, headers=auth(user))).json())["status"] == "scheduled"
    fresh = await client.patch(
        url + "/status", json={"status": "cancelled"}, headers={**auth(user), "If-Match": 'W/"2"'}
    )
    assert fresh.status == 200
    assert fresh.headers["ETag"] == '"3"'
    assert (await fresh.json())["status"] == "cancelled"


async def test_patch_updates_version_and_honours_if_match(client: Client, register: Registrar) -> None:
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}"
    ok = await client.patch(url, json={"title": "Moved"}, headers={**auth(user), "If-Match": '"1"'})
    assert ok.status == 200
    assert ok.headers["ETag"] == '"2"'
    assert (await ok.json())["title"] == "Moved"
    stale = await client.patch(url, json={"title": "Again"}, headers={**auth(user), "If-Match": '"1"'})
    assert stale.status == 412
    garbage = await client.patch(url, json={"title": "Again"}, headers={**auth(user), "If-Match": "bogus"})
    assert garbage.status == 412
    assert (await (await client.get(url, headers=auth(user))).json())["title"] == "Moved"
    stale_delete = await client.delete(url, headers={**auth(user), "If-Match": '"1"'})
    assert stale_delete.status == 412


@pytest.mark.parametrize("etag", ["\u00b2", '"\u00b2"', "\u0661", '"\u0661"', 'W/"\uff11"'])
async def test_if_match_takes_only_ascii_digits(client: Client, register: Registrar, etag: str) -> None:
    # U+00B2 passes str.isdigit() but not int() (a 500); U+0661 and U+FF11 pass both and matched version 1.
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}"
    headers = {**auth(user), "If-Match": etag}  # sent as raw UTF-8
    patched = await client.patch(url, json={"title": "x"}, headers=headers)
    assert patched.status == 412, await patched.text()
    assert patched.content_type == "application/problem+json"
    assert (await client.delete(url, headers=headers)).status == 412
    assert (await (await client.get(url, headers=auth(user))).json())["version"] == 1


async def test_patch_rules(client: Client, register: Registrar) -> None:
    user = await register()
    a = await create(client, user, hours=30)
    b = await create(client, user, hours=40)
    url = f"/api/booking/{b['id']}"
    onto_a = await client.patch(
        url, json={"startTime": a["startTime"], "endTime": a["endTime"]}, headers=auth(user)
    )
    assert onto_a.status == 409
    assert (await onto_a.json())["conflictingId"] == a["id"]
    assert (await client.patch(url, json={"endTime": b["startTime"]}, headers=auth(user))).status == 400
    assert (await client.patch(url, json={}, headers=auth(user))).status == 400
    assert (await client.patch(url, json={"userId": str(uuid.uuid4())}, headers=auth(user))).status == 400
    assert (await client.patch(url, json={"startTime": slot(-1)[0]}, headers=auth(user))).status == 400
    moved = await client.patch(
        url, json={"startTime": slot(50)[0], "endTime": slot(51)[0]}, headers=auth(user)
    )
    assert moved.status == 200


async def test_other_users_bookings_are_404_everywhere(client: Client, register: Registrar) -> None:
    owner = await register()
    intruder = await register()
    b = await create(client, owner, hours=30)
    url = f"/api/booking/{b['id']}"
    assert (await client.get(url, headers=auth(intruder))).status == 404
    assert (await client.patch(url, json={"title": "x"}, headers=auth(intruder))).status == 404
    assert (
        await client.patch(url + "/status", json={"status": "cancelled"}, headers=auth(intruder))
    ).status == 404
    assert (await client.delete(url, headers=auth(intruder))).status == 404
    listing = await client.get(f"/api/booking?userId={owner['user']['id']}", headers=auth(intruder))
    assert listing.status == 403
    assert (await (await client.get(url, headers=auth(owner))).json())["title"] == "Dentist"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "00000000-0000-4000-8000-000000000000", "' OR 1=1 --"])
async def test_unknown_or_malformed_ids_are_404(client: Client, register: Registrar, bad_id: str) -> None:
    user = await register()
    from urllib.parse import quote

    url = f"/api/booking/{quote(bad_id)}"
    assert (await client.get(url, headers=auth(user))).status == 404
    assert (await client.delete(url, headers=auth(user))).status == 404
    assert (await client.patch(url, json={"title": "x"}, headers=auth(user))).status == 404


async def test_delete_removes_from_reads_but_audit_keeps_it(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    b = await create(client, user, hours=30)
    url = f"/api/booking/{b['id']}"
    renamed = await (await client.patch(url, json={"title": "Renamed"}, headers=auth(user))).json()
    assert (await client.delete(url, headers=auth(user))).status == 204
    assert (await client.get(url, headers=auth(user))).status == 404
    assert (await client.delete(url, headers=auth(user))).status == 404
    assert (await (await client.get("/api/booking", headers=auth(user))).json())["meta"]["total"] == 0
    assert (await client.get(url + "/history", headers=auth(user))).status == 403
    history = await (await client.get(url + "/history", headers=auth(admin))).json()
    assert [e["action"] for e in history["data"]] == ["create", "update", "delete"]
    assert history["data"][1]["before"]["title"] == "Dentist"
    assert history["data"][1]["after"]["title"] == "Renamed"
    assert history["data"][2]["after"] is None
    assert all(e["actorId"] == user["user"]["id"] for e in history["data"])
    # The snapshots have the booking resource's own shape (camelCase, `Z` times, no internal columns),
    # whether the create statement (to_jsonb) or an update (the service) wrote them.
    created, updated, deleted = history["data"]
    assert created["before"] is None and created["after"] == b
    assert updated["before"] == b and updated["after"] == renamed
    assert deleted["before"] == renamed


async def test_pagination_meta_is_right_on_every_page(client: Client, register: Registrar) -> None:
    user = await register()
    created = [await create(client, user, hours=24 + 2 * i) for i in range(7)]
    seen = []
    for page in (1, 2, 3):
        body = await (await client.get(f"/api/booking?page={page}&limit=3", headers=auth(user))).json()
        assert body["meta"] == {"total": 7, "page": page, "limit": 3, "totalPages": 3}
        seen += [b["id"] for b in body["data"]]
    assert seen == [b["id"] for b in created]  # ordered by startTime
    beyond = await (await client.get("/api/booking?page=9&limit=3", headers=auth(user))).json()
    assert beyond["data"] == []
    assert beyond["meta"]["total"] == 7


async def test_list_filters(client: Client, register: Registrar) -> None:
    user = await register()
    a = await create(client, user, hours=24)
    b = await create(client, user, hours=48)
    await client.patch(f"/api/booking/{b['id']}/status", json={"status": "cancelled"}, headers=auth(user))
    from urllib.parse import quote

    q = f"from={quote(a['startTime'])}&to={quote(b['startTime'])}"
    only_a = await (await client.get(f"/api/booking?{q}", headers=auth(user))).json()
    assert [x["id"] for x in only_a["data"]] == [a["id"]]
    cancelled = await (await client.get("/api/booking?status=cancelled", headers=auth(user))).json()
    assert [x["id"] for x in cancelled["data"]] == [b["id"]]
    upcoming = await (await client.get("/api/booking/upcoming?limit=5", headers=auth(user))).json()
    assert [x["id"] for x in upcoming["data"]] == [a["id"]]
    past = await (await client.get("/api/booking/past", headers=auth(user))).json()
    assert past["data"] == []


@pytest.mark.parametrize(
    "q",
    [
        "page=0",
        "page=-1",
        "limit=0",
        "limit=101",
        "limit=10000",
        "page=abc",
        "status=done",
        "from=yesterday",
        "from=2030-01-01T00:00:00",
        "userId=nope",
        "bogus=1",
    ],
)
async def test_list_rejects_bad_queries(client: Client, register: Registrar, q: str) -> None:
    user = await register()
    resp = await client.get(f"/api/booking?{q}", headers=auth(user))
    assert resp.status == 400, q


async def test_admin_sees_all_or_one_user(client: Client, register: Registrar, admin: dict[str, Any]) -> None:
    u1, u2 = await register(), await register()
    b1 = await create(client, u1, hours=24)
    await create(client, u2, hours=24)
    one = await (await client.get(f"/api/booking?userId={u1['user']['id']}", headers=auth(admin))).json()
    assert [b["id"] for b in one["data"]] == [b1["id"]]
    everyone = await (await client.get("/api/booking?limit=100", headers=auth(admin))).json()
    assert everyone["meta"]["total"] >= 2
    got = await client.get(f"/api/booking/{b1['id']}", headers=auth(admin))
    assert got.status == 200
    patched = await client.patch(f"/api/booking/{b1['id']}", json={"notes": "by admin"}, headers=auth(admin))
    assert patched.status == 200
    assert (await patched.json())["userId"] == u1["user"]["id"]


async def test_idempotency_key_replays_and_rejects_other_bodies(client: Client, register: Registrar) -> None:
    user = await register()
    body = booking_body(hours=60)
    headers = {**auth(user), "Idempotency-Key": "create-abc-1"}
    first = await client.post("/api/booking", json=body, headers=headers)
    again = await client.post("/api/booking", json=body, headers=headers)
    assert first.status == again.status == 201
    # The same document byte for byte, keys in the same order (not only an equal object).
    assert (await first.read()) == (await again.read())
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = await client.post("/api/booking", json=booking_body(hours=70), headers=headers)
    assert other.status == 422
    listing = await (await client.get("/api/booking", headers=auth(user))).json()
    assert listing["meta"]["total"] == 1
    bad = await client.post("/api/booking", json=body, headers={**auth(user), "Idempotency-Key": "x" * 300})
    assert bad.status == 400


async def test_concurrent_same_idempotency_key_creates_once(client: Client, register: Registrar) -> None:
    user = await register()
    body = booking_body(hours=80)
    headers = {**auth(user), "Idempotency-Key": "race-1"}
    responses = await asyncio.gather(
        *(client.post("/api/booking", json=body, headers=headers) for _ in range(8))
    )
    assert {r.status for r in responses} == {201}
    assert len({(await r.json())["id"] for r in responses}) == 1


async def test_no_overlapping_active_rows_after_a_burst(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    bodies = [booking_body(hours=100 + (i % 4) * 0.5, length=1) for i in range(24)]
    responses = await asyncio.gather(
        *(client.post("/api/booking", json=b, headers=auth(user)) for b in bodies)
    )
    statuses = sorted(r.status for r in responses)
    assert set(statuses) <= {201, 409}
    overlapping = await db_conn.fetchval(
        """SELECT count(*) FROM bookings a JOIN bookings b ON a.user_id = b.user_id AND a.id < b.id
           WHERE a.user_id = $1 AND a.status IN ('scheduled','in-progress')
           AND b.status IN ('scheduled','in-progress')
           AND tstzrange(a.start_time, a.end_time, '[)') && tstzrange(b.start_time, b.end_time, '[)')""",
        uuid.UUID(user["user"]["id"]),
    )
    assert overlapping == 0
    assert statuses.count(201) == 2  # slots at +0h and +1h fit; +0.5h and +1.5h overlap them
