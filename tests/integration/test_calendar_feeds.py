"""Calendar feeds over the app against real PostgreSQL and Redis: managing feed URLs (create, list, rotate,
revoke, the limit), fetching them (404s alike, 429 after too many, ETag/304), what a bookings feed and a
resource feed show, and a series expanded by another implementation (recurring-ical-events) to exactly
its rows, across a DST change. Feeds are parsed with `icalendar`, and checked by libical where it is
installed."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import recurring_ical_events
from icalendar import Calendar, Event

from server.web.keys import CALENDAR_FEEDS
from tests.conftest import Client, Registrar, auth
from tests.integration.test_bookings import create
from tests.integration.test_resources import body, book, new_resource
from tests.support import unique_email

BERLIN = ZoneInfo("Europe/Berlin")


async def new_feed(client: Client, session: dict[str, Any], **fields: Any) -> dict[str, Any]:
    resp = await client.post(
        "/api/calendar/feeds", json={"kind": "bookings", **fields}, headers=auth(session)
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def secret_of(feed: dict[str, Any]) -> str:
    """The secret part of a feed URL's `bkcal_<prefix>_<secret>` (which may itself contain `_`)."""
    return str(feed["path"].removeprefix("/cal/").removesuffix(".ics").split("_", 2)[2])


async def fetch(client: Client, path: str, **headers: str) -> tuple[int, bytes, Any]:
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.read(), resp.headers


async def calendar(client: Client, feed: dict[str, Any]) -> Calendar:
    status, text, headers = await fetch(client, feed["path"])
    assert status == 200, text
    assert headers["Content-Type"] == "text/calendar; charset=utf-8"
    return Calendar.from_ical(text)


def events(cal: Calendar) -> dict[str, Event]:
    return {str(e["UID"]): e for e in cal.walk("VEVENT")}


async def login(client: Client, email: str | None = None) -> dict[str, Any]:
    resp = await client.post(
        "/api/auth/register",
        json={"email": email or unique_email(), "password": "correct horse battery", "name": "Feeds"},
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


# --- managing feeds ------------------------------------------------------------------------------------


async def test_create_list_rotate_and_revoke(client: Client, register: Registrar) -> None:
    user = await register()
    feed = await new_feed(client, user, name="Work")
    assert feed["kind"] == "bookings" and feed["name"] == "Work" and feed["resourceId"] is None
    token = feed["path"].removeprefix("/cal/").removesuffix(".ics")
    assert token.startswith(f"bkcal_{feed['tokenPrefix']}_") and len(token) == 6 + 12 + 1 + 43
    assert feed["url"].endswith(feed["path"]) and feed["url"].startswith("http://")
    listed = await (await client.get("/api/calendar/feeds", headers=auth(user))).json()
    assert [f["id"] for f in listed["data"]] == [feed["id"]]
    assert "url" not in listed["data"][0] and "path" not in listed["data"][0]
    assert token not in str(listed)  # the secret is shown once
    assert (await fetch(client, feed["path"]))[0] == 200
    listed = await (await client.get("/api/calendar/feeds", headers=auth(user))).json()
    assert listed["data"][0]["lastUsedAt"] is not None

    rotated = await client.post(f"/api/calendar/feeds/{feed['id']}/rotate", headers=auth(user))
    assert rotated.status == 200
    new = await rotated.json()
    assert new["id"] == feed["id"] and new["path"] != feed["path"] and new["rotatedAt"] is not None
    assert (await fetch(client, feed["path"]))[0] == 404  # the old URL stops at once
    assert (await fetch(client, new["path"]))[0] == 200

    revoked = await client.delete(f"/api/calendar/feeds/{feed['id']}", headers=auth(user))
    assert revoked.status == 204
    assert (await fetch(client, new["path"]))[0] == 404
    assert (await (await client.get("/api/calendar/feeds", headers=auth(user))).json())["data"] == []
    for method, path in (("DELETE", ""), ("POST", "/rotate")):
        again = await client.request(method, f"/api/calendar/feeds/{feed['id']}{path}", headers=auth(user))
        assert again.status == 404, (method, path)


async def test_only_the_owner_manages_a_feed_not_even_an_admin(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    owner, other = await register(), await register()
    feed = await new_feed(client, owner)
    for session in (other, admin):
        for method, path in (("POST", "/rotate"), ("DELETE", "")):
            resp = await client.request(
                method, f"/api/calendar/feeds/{feed['id']}{path}", headers=auth(session)
            )
            assert resp.status == 404, (method, path)
        mine = await (await client.get("/api/calendar/feeds", headers=auth(session))).json()
        assert mine["data"] == []
    assert (await fetch(client, feed["path"]))[0] == 200  # untouched
    assert (await client.get("/api/calendar/feeds")).status == 401
    assert (await client.post("/api/calendar/feeds/not-a-uuid/rotate", headers=auth(owner))).status == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "everything"}, "kind"),
        ({}, "kind"),
        ({"kind": "resource"}, "resourceId"),
        ({"kind": "bookings", "resourceId": str(uuid.uuid4())}, "resourceId"),
        ({"kind": "resource", "resourceId": "nope"}, "resourceId"),
        ({"kind": "bookings", "name": "x" * 101}, "name"),
        ({"kind": "bookings", "name": "   "}, "name"),
        ({"kind": "bookings", "name": "bell\u0007"}, "name"),
        ({"kind": "bookings", "name": "nul\u0000"}, "name"),
        ({"kind": "bookings", "token": "mine"}, "token"),
    ],
)
async def test_invalid_creates_are_400_with_the_field(
    client: Client, register: Registrar, payload: dict[str, Any], field: str
) -> None:
    user = await register()
    resp = await client.post("/api/calendar/feeds", json=payload, headers=auth(user))
    assert resp.status == 400, await resp.text()
    assert field in {e["field"] for e in (await resp.json())["errors"]}


async def test_resource_feeds_need_an_existing_active_resource(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    user = await register()
    unknown = await client.post(
        "/api/calendar/feeds", json={"kind": "resource", "resourceId": str(uuid.uuid4())}, headers=auth(user)
    )
    assert unknown.status == 404
    room = await new_resource(client, admin)
    feed = await new_feed(client, user, kind="resource", resourceId=room["id"])
    assert feed["name"] == room["name"] and feed["resourceId"] == room["id"]
    assert (await client.delete(f"/api/resources/{room['id']}", headers=auth(admin))).status == 204
    retired = await client.post(
        "/api/calendar/feeds", json={"kind": "resource", "resourceId": room["id"]}, headers=auth(user)
    )
    assert retired.status == 409
    assert (await fetch(client, feed["path"]))[0] == 200  # an existing feed of it goes on


async def test_at_most_twenty_live_feeds_and_revoked_ones_do_not_count(
    client: Client, register: Registrar
) -> None:
    user = await register()
    feeds = await asyncio.gather(*(new_feed(client, user) for _ in range(20)))  # concurrently, too
    over = await client.post("/api/calendar/feeds", json={"kind": "bookings"}, headers=auth(user))
    assert over.status == 409 and "20" in (await over.json())["detail"]
    assert (await client.delete(f"/api/calendar/feeds/{feeds[0]['id']}", headers=auth(user))).status == 204
    await new_feed(client, user)
    listed = await (await client.get("/api/calendar/feeds", headers=auth(user))).json()
    assert len(listed["data"]) == 20


async def test_twenty_one_concurrent_creates_give_exactly_twenty(client: Client, register: Registrar) -> None:
    user = await register()
    answers = await asyncio.gather(
        *(
            client.post("/api/calendar/feeds", json={"kind": "bookings"}, headers=auth(user))
            for _ in range(25)
        )
    )
    assert sorted(a.status for a in answers) == [201] * 20 + [409] * 5


# --- fetching: refusals --------------------------------------------------------------------------------


async def test_every_refused_token_is_the_same_404(
    client: Client, register: Registrar, admin: dict[str, Any], db_conn: Any
) -> None:
    user, suspended = await register(), await register()
    live = await new_feed(client, user)
    revoked = await new_feed(client, user)
    await client.delete(f"/api/calendar/feeds/{revoked['id']}", headers=auth(user))
    rotated = await new_feed(client, user)
    await client.post(f"/api/calendar/feeds/{rotated['id']}/rotate", headers=auth(user))
    of_suspended = await new_feed(client, suspended)
    resp = await client.patch(
        f"/api/users/{suspended['user']['id']}", json={"status": "suspended"}, headers=auth(admin)
    )
    assert resp.status == 200
    token = live["path"].removeprefix("/cal/").removesuffix(".ics")
    prefix, secret = live["tokenPrefix"], secret_of(live)
    refused = [
        revoked["path"],
        rotated["path"],  # the URL from before the rotation
        of_suspended["path"],
        f"/cal/bkcal_{prefix}_{secret[::-1]}.ics",  # a valid prefix, a wrong secret
        f"/cal/bkcal_{'0' * 12}_{secret}.ics",  # an unknown prefix
        f"/cal/bkcal_{prefix}_{secret[:-1]}.ics",  # one character short
        f"/cal/bkcal_{prefix.upper()}_{secret}.ics",
        f"/cal/bkcal_{prefix}_{secret[:-1]}%C3%A9.ics",  # non-ASCII
        f"/cal/bkcal_{prefix}_{secret[:-1]}%00.ics",
        f"/cal/{token}x.ics",
        "/cal/x.ics",
        f"/cal/{'a' * 4000}.ics",
        f"/cal/{token}",  # not .ics: no such route, the router's 404
        f"/cal/{token}.ics/more",
    ]
    answers = set()
    for path in refused:
        status, text, headers = await fetch(client, path, **{"X-Request-ID": "same-request-id"})
        assert status == 404, (path, text)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert "ETag" not in headers
        answers.add(text)
    assert len(answers) == 1, answers  # byte for byte
    assert (await fetch(client, live["path"]))[0] == 200
    # The suspended owner's feed is refused, not deleted: it answers again once they are active.
    await client.patch(
        f"/api/users/{suspended['user']['id']}", json={"status": "active"}, headers=auth(admin)
    )
    assert (await fetch(client, of_suspended["path"]))[0] == 200


async def test_unknown_prefix_and_wrong_secret_take_comparable_time(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    """Both look the prefix up and compare a hash (against a dummy when the prefix is unknown), so a
    guesser cannot tell a real prefix from the time of its 404. Medians of interleaved samples."""
    client = await make_client(feed_misses_per_ip=1000)
    user = await login(client)
    feed = await new_feed(client, user)
    secret = secret_of(feed)
    paths = {
        "unknown prefix": f"/cal/bkcal_{'0' * 12}_{secret}.ics",
        "wrong secret": f"/cal/bkcal_{feed['tokenPrefix']}_{secret[::-1]}.ics",
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(25):
        for name, path in paths.items():
            started = time.perf_counter()
            status, text, _ = await fetch(client, path)
            assert status == 404, text
            times[name].append(time.perf_counter() - started)
    a, b = (statistics.median(t) for t in times.values())
    assert max(a, b) < 2 * min(a, b) + 0.003, times


async def test_too_many_404s_from_one_address_are_429_then_even_for_a_live_feed(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make_client(trust_proxy=True, feed_misses_per_ip=3, feed_miss_window=60)
    user = await login(client)
    feed = await new_feed(client, user)
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    guessed = f"/cal/bkcal_{'1' * 12}_{'A' * 43}.ics"
    assert (await fetch(client, feed["path"], **guesser))[0] == 200  # successes are not counted
    for _ in range(3):
        assert (await fetch(client, guessed, **guesser))[0] == 404
    for path in (guessed, "/cal/bad.ics", feed["path"]):
        status, text, headers = await fetch(client, path, **guesser)
        assert status == 429, (path, text)
        assert 1 <= int(headers["Retry-After"]) <= 60
    # Another address is not affected, and successes never count against it.
    for _ in range(5):
        assert (await fetch(client, feed["path"], **{"X-Forwarded-For": "203.0.113.8"}))[0] == 200


async def test_no_feed_token_reaches_the_logs(client: Client, register: Registrar, caplog: Any) -> None:
    import logging

    from server.web.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    user = await register()
    feed = await new_feed(client, user)
    secret = secret_of(feed)
    wrong = f"/cal/bkcal_{feed['tokenPrefix']}_{secret[::-1]}.ics"
    for path in (feed["path"], wrong, f"/cal/bkcal_{'2' * 12}_{secret}.ics"):
        await fetch(client, path)
    await client.post(f"/api/calendar/feeds/{feed['id']}/rotate", headers=auth(user))
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    formatter = JsonFormatter()
    text = "\n".join(f"{formatter.format(r)} {r.__dict__}" for r in records)
    assert "/cal/{token}.ics 200" in text, "nothing to check"
    assert "refused: wrong secret" in text, "nothing to check"
    for value in (secret, secret[::-1], feed["path"]):
        assert value not in text


# --- fetching: caching ---------------------------------------------------------------------------------


async def test_strong_etag_and_304_until_anything_shown_changes(client: Client, register: Registrar) -> None:
    user = await register()
    booking = await create(client, user)
    feed = await new_feed(client, user)
    status, text, headers = await fetch(client, feed["path"])
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"') and not etag.startswith("W/")
    assert headers["Cache-Control"] == "private, max-age=300"
    again = await fetch(client, feed["path"])
    assert again[1] == text and again[2]["ETag"] == etag  # the same rows, the same bytes
    for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, empty, headers = await fetch(client, feed["path"], **{"If-None-Match": sent})
        assert (status, empty, headers["ETag"]) == (304, b"", etag), sent
    assert (await fetch(client, feed["path"], **{"If-None-Match": '"other"'}))[0] == 200
    head = await client.head(feed["path"])
    assert head.status == 200 and head.headers["ETag"] == etag

    seen = {etag}
    changes = [
        ("PATCH", f"/api/booking/{booking['id']}", {"title": "Moved"}),
        ("POST", "/api/booking", body(200, 201, title="Another")),
        ("PATCH", f"/api/booking/{booking['id']}/status", {"status": "cancelled"}),
        ("DELETE", f"/api/booking/{booking['id']}", None),
    ]
    for method, path, payload in changes:
        resp = await client.request(method, path, json=payload, headers=auth(user))
        assert resp.status in (200, 201, 204), await resp.text()
        status, text, headers = await fetch(client, feed["path"], **{"If-None-Match": etag})
        assert status == 200, (method, path)
        assert headers["ETag"] not in seen, (method, path)
        etag = headers["ETag"]
        seen.add(etag)
    assert b"Another" in text and b"Moved" not in text


# --- what a bookings feed shows ------------------------------------------------------------------------


async def test_a_bookings_feed_shows_the_owners_bookings_of_the_window(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user, other = await register(), await register()
    plain = await create(client, user, hours=30, title="Dentist", location="Room 1", description="a, b; c\nd")
    changed = await create(client, user, hours=50, title="Planning")
    resp = await client.patch(
        f"/api/booking/{changed['id']}", json={"title": "Replanned"}, headers=auth(user)
    )
    changed = await resp.json()
    resp = await client.patch(
        f"/api/booking/{changed['id']}/status", json={"status": "cancelled"}, headers=auth(user)
    )
    changed = await resp.json()
    theirs = await create(client, other, hours=30, title="Not yours")
    # History: one booking ended 89 days ago (shown), one 91 days ago (not), written directly.
    seq = await db_conn.fetchval("SELECT seq FROM users WHERE id = $1", uuid.UUID(user["user"]["id"]))
    now = datetime.now(UTC)
    old: dict[str, uuid.UUID] = {}
    for days in (89, 91):
        old[f"{days}"] = await db_conn.fetchval(
            "INSERT INTO bookings (user_id, user_seq, title, start_time, end_time, status) "
            "VALUES ($1, $2, $3, $4, $5, 'completed') RETURNING id",
            uuid.UUID(user["user"]["id"]), seq, f"{days} days ago",
            now - timedelta(days=days, hours=1), now - timedelta(days=days),
        )  # fmt: skip
    feed = await new_feed(client, user)
    cal = await calendar(client, feed)
    assert str(cal["PRODID"]) and str(cal["VERSION"]) == "2.0" and str(cal["X-WR-CALNAME"]) == "My bookings"
    shown = events(cal)
    assert set(shown) == {f"{plain['id']}@booking", f"{changed['id']}@booking", f"{old['89']}@booking"}
    assert f"{theirs['id']}@booking" not in shown
    e = shown[f"{plain['id']}@booking"]
    start = datetime.fromisoformat(plain["startTime"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(plain["endTime"].replace("Z", "+00:00"))
    assert (e["DTSTART"].dt, e["DTEND"].dt) == (start, end)
    assert e["DTSTART"].dt.tzinfo is not None and e["DTSTART"].dt.utcoffset() == timedelta(0)
    assert (str(e["SUMMARY"]), str(e["LOCATION"]), str(e["DESCRIPTION"])) == (
        "Dentist",
        "Room 1",
        "a, b; c\nd",
    )
    assert (int(e["SEQUENCE"]), str(e["STATUS"])) == (0, "CONFIRMED")
    updated = datetime.fromisoformat(plain["updatedAt"].replace("Z", "+00:00")).replace(microsecond=0)
    assert e["DTSTAMP"].dt == updated and e["LAST-MODIFIED"].dt == updated
    c = shown[f"{changed['id']}@booking"]
    assert (str(c["SUMMARY"]), str(c["STATUS"])) == ("Replanned", "CANCELLED")
    assert int(c["SEQUENCE"]) == changed["version"] - 1 == 2  # grows with each change
    assert "DESCRIPTION" not in c and "LOCATION" not in c
    assert str(shown[f"{old['89']}@booking"]["STATUS"]) == "CONFIRMED"  # completed: it happened


# --- series --------------------------------------------------------------------------------------------

SERIES_START = datetime(2027, 3, 1, 9, 0, tzinfo=BERLIN)  # a Monday; Berlin moves to summer time on 03-28


async def insert_series(db_conn: Any, user: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A weekly 09:00 Berlin series of eight Mondays across the DST change, written as the series code
    writes it (the rule normalized, dtstart its first instance), with `version` 3."""
    values = {
        "rrule": "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;COUNT=8",
        "time_zone": "Europe/Berlin",
        "dtstart": SERIES_START,
        "duration_seconds": 3600,
        "title": "Standup",
        "description": "Daily sync",
        "location": "Room 4",
        "version": 3,
        **fields,
    }
    row = await db_conn.fetchrow(
        "INSERT INTO booking_series (user_id, rrule, time_zone, dtstart, duration_seconds, title, "
        "description, location, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
        uuid.UUID(user["user"]["id"]), values["rrule"], values["time_zone"], values["dtstart"],
        values["duration_seconds"], values["title"], values["description"], values["location"],
        values["version"],
    )  # fmt: skip
    return dict(row)


async def insert_occurrence(
    db_conn: Any, series: dict[str, Any], occurrence: datetime, **fields: Any
) -> dict[str, Any]:
    seq = await db_conn.fetchval("SELECT seq FROM users WHERE id = $1", series["user_id"])
    values = {
        "title": series["title"],
        "description": series["description"],
        "location": series["location"],
        "start_time": occurrence,
        "end_time": occurrence + timedelta(seconds=series["duration_seconds"]),
        "status": "scheduled",
        "version": 1,
        **fields,
    }
    row = await db_conn.fetchrow(
        "INSERT INTO bookings (user_id, user_seq, title, description, location, start_time, end_time, "
        "status, version, series_id, occurrence_start) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        series["user_id"], seq, values["title"], values["description"], values["location"],
        values["start_time"], values["end_time"], values["status"], values["version"], series["id"],
        occurrence,
    )  # fmt: skip
    return dict(row)


def mondays(first: datetime, n: int) -> list[datetime]:
    """The instants of `n` weekly 09:00 Berlin instances: wall time kept, offset per date."""
    return [(first + timedelta(weeks=i)).replace(tzinfo=BERLIN).astimezone(UTC) for i in range(n)]


async def test_a_series_expands_to_exactly_its_rows_across_the_dst_change(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    single = await create(client, user, hours=30, title="Single")
    series = await insert_series(db_conn, user)
    instants = mondays(SERIES_START.replace(tzinfo=None), 8)
    assert instants[3].hour == 8 and instants[4].hour == 7  # 09:00 CET, then 09:00 CEST
    rows = {}
    for i, instant in enumerate(instants):
        if i == 2:
            continue  # deleted (or skipped): no row, an EXDATE
        fields: dict[str, Any] = {}
        if i == 1:  # moved two hours later and made 30 minutes longer
            fields = {"start_time": instant + timedelta(hours=2), "end_time": instant + timedelta(hours=3.5)}
            fields["version"] = 2
        if i == 3:
            fields = {"status": "cancelled", "version": 2}
        if i == 5:
            fields = {"title": "Retro", "location": None, "version": 4}
        rows[i] = await insert_occurrence(db_conn, series, instant, **fields)
    feed = await new_feed(client, user)
    status, text, _ = await fetch(client, feed["path"])
    assert status == 200
    cal = Calendar.from_ical(text)
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["Europe/Berlin"]
    vevents = cal.walk("VEVENT")
    uid = f"{series['id']}@booking"
    [master] = [e for e in vevents if str(e["UID"]) == uid and "RECURRENCE-ID" not in e]
    assert master["DTSTART"].params["TZID"] == "Europe/Berlin"
    assert master["DTSTART"].dt.replace(tzinfo=None) == datetime(2027, 3, 1, 9, 0)
    assert master["DTEND"].dt.replace(tzinfo=None) == datetime(2027, 3, 1, 10, 0)
    assert master["RRULE"].to_ical() == b"FREQ=WEEKLY;COUNT=8;INTERVAL=1;BYDAY=MO"
    assert int(master["SEQUENCE"]) == 2 and str(master["SUMMARY"]) == "Standup"
    assert b"EXDATE;TZID=Europe/Berlin:20270315T090000\r\n" in text
    overrides = {e["RECURRENCE-ID"].dt: e for e in vevents if "RECURRENCE-ID" in e}
    assert set(overrides) == {instants[1], instants[3], instants[5]}  # the unchanged rows need none
    assert all(e["RECURRENCE-ID"].params["TZID"] == "Europe/Berlin" for e in overrides.values())
    assert b"RECURRENCE-ID;TZID=Europe/Berlin:20270405T090000" in text  # local time, after the change
    assert str(overrides[instants[3]]["STATUS"]) == "CANCELLED"
    assert [int(overrides[instants[i]]["SEQUENCE"]) for i in (1, 3, 5)] == [1, 1, 3]
    assert str(overrides[instants[5]]["SUMMARY"]) == "Retro" and "LOCATION" not in overrides[instants[5]]

    # Another implementation's expansion gives exactly the rows: the active ones confirmed, the
    # cancelled one as CANCELLED, the missing one nowhere.
    expanded = recurring_ical_events.of(cal).between(
        datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 12, 1, tzinfo=UTC)
    )
    got: dict[str, set[tuple[datetime, datetime]]] = {"CONFIRMED": set(), "CANCELLED": set()}
    for e in expanded:
        got[str(e["STATUS"])].add((e["DTSTART"].dt.astimezone(UTC), e["DTEND"].dt.astimezone(UTC)))
    want: dict[str, set[tuple[datetime, datetime]]] = {"CONFIRMED": set(), "CANCELLED": set()}
    for row in rows.values():
        key = "CANCELLED" if row["status"] == "cancelled" else "CONFIRMED"
        want[key].add((row["start_time"].astimezone(UTC), row["end_time"].astimezone(UTC)))
    start = datetime.fromisoformat(single["startTime"].replace("Z", "+00:00"))
    want["CONFIRMED"].add((start, start + timedelta(hours=1)))
    assert got == want
    assert (instants[4], instants[4] + timedelta(hours=1)) in got["CONFIRMED"]  # 07:00 UTC after the change

    # A change to the series (its version) or to one occurrence changes the feed's ETag.
    etag = (await fetch(client, feed["path"]))[2]["ETag"]
    await db_conn.execute("UPDATE booking_series SET version = version + 1 WHERE id = $1", series["id"])
    after_series = (await fetch(client, feed["path"]))[2]["ETag"]
    await db_conn.execute("UPDATE bookings SET version = version + 1 WHERE id = $1", rows[0]["id"])
    after_row = (await fetch(client, feed["path"]))[2]["ETag"]
    assert len({etag, after_series, after_row}) == 3


async def test_a_rule_past_366_instances_is_bounded_at_the_last_one(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    """A series has at most 366 instances (actors/domain/recurrence.py expands no more); a rule whose UNTIL
    lies beyond gets an UNTIL at the 366th in the feed, so no client shows an instance there can be no row
    for."""
    user = await register()
    series = await insert_series(db_conn, user, rrule="FREQ=DAILY;INTERVAL=1;UNTIL=20290101T000000Z")
    instants = [(SERIES_START + timedelta(days=i)).astimezone(UTC) for i in range(3)]
    for instant in instants:
        await insert_occurrence(db_conn, series, instant)
    cal = await calendar(client, await new_feed(client, user))
    [master] = [e for e in cal.walk("VEVENT") if "RRULE" in e]
    until = master["RRULE"]["UNTIL"][0]
    last = (SERIES_START.replace(tzinfo=None) + timedelta(days=365)).replace(tzinfo=BERLIN)
    assert until == last.astimezone(UTC)
    expanded = recurring_ical_events.of(cal).between(
        datetime(2027, 1, 1, tzinfo=UTC), datetime(2029, 6, 1, tzinfo=UTC)
    )
    assert sorted(e["DTSTART"].dt.astimezone(UTC) for e in expanded) == instants


async def test_a_stored_rule_that_does_not_parse_fails_no_feed(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    """The series code stores only rules it parses; should one not (a rule from outside its subset), its
    occurrences are shown as single events and the rest of the feed is served."""
    user = await register()
    single = await create(client, user, hours=30)
    series = await insert_series(db_conn, user, rrule="FREQ=YEARLY;COUNT=2")
    row = await insert_occurrence(db_conn, series, SERIES_START.astimezone(UTC))
    shown = events(await calendar(client, await new_feed(client, user)))
    assert set(shown) == {f"{single['id']}@booking", f"{row['id']}@booking"}
    assert "RRULE" not in shown[f"{row['id']}@booking"]


async def test_a_series_whose_rows_all_ended_before_the_window_is_not_shown(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    user = await register()
    start = (datetime.now(UTC) - timedelta(days=200)).replace(microsecond=0)
    series = await insert_series(db_conn, user, rrule="FREQ=DAILY;COUNT=2", time_zone="UTC", dtstart=start)
    for i in range(2):
        await insert_occurrence(db_conn, series, start + timedelta(days=i))
    cal = await calendar(client, await new_feed(client, user))
    assert cal.walk("VEVENT") == [] and cal.walk("VTIMEZONE") == []


# --- what a resource feed shows ------------------------------------------------------------------------


async def test_a_resource_feed_shows_busy_time_and_titles_only_to_their_owner_or_an_admin(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    me, someone = await register(), await register()
    room = await new_resource(client, admin, bufferBeforeMinutes=10, bufferAfterMinutes=15)
    status, mine = await book(client, me, body(10, 11, title="My planning", resourceId=room["id"]))
    assert status == 201, mine
    status, theirs = await book(
        client,
        someone,
        body(
            12,
            13,
            title="Their secret offsite",
            description="budget cuts",
            location="Basement",
            resourceId=room["id"],
            attendees=[{"email": "boss@example.com", "name": "The Boss"}],
        ),
    )
    assert status == 201, theirs
    status, gone = await book(client, someone, body(14, 15, title="Cancelled one", resourceId=room["id"]))
    resp = await client.patch(
        f"/api/booking/{gone['id']}/status", json={"status": "cancelled"}, headers=auth(someone)
    )
    assert resp.status == 200
    personal = await create(client, me, hours=100, title="Personal")

    feed = await new_feed(client, me, kind="resource", resourceId=room["id"])
    status, text, _ = await fetch(client, feed["path"])
    assert status == 200
    for secret in (
        b"Their secret",
        b"budget",
        b"Basement",
        b"boss@",
        b"The Boss",
        b"Cancelled one",
        b"Personal",
    ):
        assert secret not in text, secret
    assert b"ATTENDEE" not in text and b"DESCRIPTION" not in text and b"LOCATION" not in text
    shown = events(Calendar.from_ical(text))
    assert set(shown) == {f"{mine['id']}@booking", f"{theirs['id']}@booking"}
    assert str(shown[f"{mine['id']}@booking"]["SUMMARY"]) == "My planning"
    assert str(shown[f"{theirs['id']}@booking"]["SUMMARY"]) == "Busy"
    e = shown[f"{theirs['id']}@booking"]
    start = datetime.fromisoformat(theirs["startTime"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(theirs["endTime"].replace("Z", "+00:00"))
    assert (e["DTSTART"].dt, e["DTEND"].dt) == (start - timedelta(minutes=10), end + timedelta(minutes=15))
    assert f"{personal['id']}@booking" not in shown

    admins = await new_feed(client, admin, kind="resource", resourceId=room["id"])
    titles = {str(e["SUMMARY"]) for e in events(await calendar(client, admins)).values()}
    assert titles == {"My planning", "Their secret offsite"}


# --- a third-party validator ---------------------------------------------------------------------------

LIBICAL_CHECK = """
import sys
import gi
gi.require_version("ICalGLib", "3.0")
from gi.repository import ICalGLib
calendar = ICalGLib.Component.new_from_string(sys.stdin.read())
assert calendar is not None and calendar.isa() == ICalGLib.ComponentKind.VCALENDAR_COMPONENT
restrictions = calendar.check_restrictions()
errors = calendar.count_errors()
print(f"restrictions={restrictions} errors={errors}")
"""


def libical(text: bytes) -> str:
    """libical's (the C library Evolution and Thunderbird build on) verdict on a calendar, through its
    GObject bindings in the system Python: RFC 5545 restrictions, and X-LIC-ERROR for every property it
    could not parse."""
    python = shutil.which("python3", path="/usr/bin")
    probe = [python or "python3", "-c", "import gi; gi.require_version('ICalGLib', '3.0')"]
    if python is None or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        pytest.skip("needs libical's GObject bindings (Debian: gir1.2-ical-3.0 python3-gi)")
    done = subprocess.run([python, "-c", LIBICAL_CHECK], input=text, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


async def test_libical_finds_no_error_in_either_kind_of_feed(
    client: Client, register: Registrar, admin: dict[str, Any], db_conn: Any
) -> None:
    user = await register()
    await create(client, user, title="Dentist, then; lunch", description="x" * 300, location="Zürich")
    series = await insert_series(db_conn, user)
    for i, instant in enumerate(mondays(SERIES_START.replace(tzinfo=None), 8)):
        if i != 2:
            await insert_occurrence(db_conn, series, instant, **({"status": "cancelled"} if i == 3 else {}))
    room = await new_resource(client, admin)
    status, _ = await book(client, user, body(40, 41, resourceId=room["id"]))
    assert status == 201
    for feed in (
        await new_feed(client, user),
        await new_feed(client, user, kind="resource", resourceId=room["id"]),
    ):
        status, text, _ = await fetch(client, feed["path"])
        assert status == 200
        assert libical(text) == "restrictions=1 errors=0"
    # The check can fail: a calendar missing PRODID, with an unparsable DTSTART.
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "BEGIN:VEVENT", "UID:x", "DTSTART:never", "END:VEVENT"]
    broken = "\r\n".join([*lines, "END:VCALENDAR", ""]).encode()
    assert libical(broken) != "restrictions=1 errors=0"


async def test_a_feed_is_what_icalendar_writes_for_it_whether_its_events_were_cached_or_not(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    """Serialized events are reused across renders (actors/domain/ics.py); the text stays what the library
    writes for the calendar it parses to, and a change shows at once."""
    from actors.domain import ics

    user = await register()
    booking = await create(client, user, title="Cached, or not")
    series = await insert_series(db_conn, user)
    for i, instant in enumerate(mondays(SERIES_START.replace(tzinfo=None), 8)):
        if i != 2:
            await insert_occurrence(db_conn, series, instant, **({"title": "Other"} if i == 4 else {}))
    feed = await new_feed(client, user)
    bodies = client.app[CALENDAR_FEEDS]._bodies  # the rendered feeds by ETag, skipped here
    first = (await fetch(client, feed["path"]))[1]
    assert Calendar.from_ical(first).to_ical() == first
    bodies.clear()
    assert (await fetch(client, feed["path"]))[1] == first  # from the cached events
    bodies.clear()
    ics._components.clear()
    assert (await fetch(client, feed["path"]))[1] == first  # from nothing
    await client.patch(f"/api/booking/{booking['id']}", json={"title": "Changed"}, headers=auth(user))
    changed = (await fetch(client, feed["path"]))[1]
    assert Calendar.from_ical(changed).to_ical() == changed
    assert b"SUMMARY:Changed" in changed and b"Cached" not in changed
    assert (
        changed.count(b"BEGIN:VEVENT") == first.count(b"BEGIN:VEVENT") == 1 + 1 + 1
    )  # single, master, Other


def test_the_local_fallback_peeks_without_counting() -> None:
    """While Redis is down the misses are counted per process (LocalWindows): a peek reads the window's
    count and leaves it, and an ended window reads as empty."""
    from server.bus.ratelimit import LocalWindows

    now = [100.0]
    windows = LocalWindows(clock=lambda: now[0])
    assert windows.peek("k") == (0, 0)
    windows.hit("k", 60)
    windows.hit("k", 60)
    assert windows.peek("k") == (2, 60_000) and windows.peek("k") == (2, 60_000)
    now[0] += 61
    assert windows.peek("k") == (0, 0)


async def test_series_made_and_edited_through_the_api_expand_to_exactly_their_rows(
    client: Client, register: Registrar, db_conn: Any
) -> None:
    """The same check on series the series API writes: one skipped instance (a blocker), one occurrence
    moved, one cancelled, one deleted, and a split with `scope=following` (two series then), across the
    spring DST change."""
    from tests.integration.test_series import create_series, iso, local, series_body, spring_forward_monday

    user = await register()
    monday = spring_forward_monday()
    blocker = local(monday + timedelta(weeks=1), 9)
    resp = await client.post(
        "/api/booking",
        json={"title": "Blocker", "startTime": iso(blocker), "endTime": iso(blocker + timedelta(hours=1))},
        headers=auth(user),
    )
    assert resp.status == 201, await resp.text()
    series = await create_series(
        client, user, series_body(monday, rrule="FREQ=WEEKLY;BYDAY=MO;COUNT=6", conflictPolicy="skip")
    )
    occ = series["occurrences"]
    assert len(occ) == 5  # the second instance skipped
    moved = local(monday + timedelta(weeks=2), 11)
    edits = [
        ("PATCH", f"/api/booking/{occ[1]['id']}",
         {"startTime": iso(moved), "endTime": iso(moved + timedelta(hours=1))}),
        ("PATCH", f"/api/booking/{occ[2]['id']}/status", {"status": "cancelled"}),
        ("DELETE", f"/api/booking/{occ[3]['id']}", None),
        ("PATCH", f"/api/booking/{occ[4]['id']}?scope=following", {"title": "Renamed"}),
    ]  # fmt: skip
    for method, path, payload in edits:
        resp = await client.request(method, path, json=payload, headers=auth(user))
        assert resp.status in (200, 204), (path, await resp.text())
    feed = await new_feed(client, user)
    status, text, _ = await fetch(client, feed["path"])
    assert status == 200, text
    cal = Calendar.from_ical(text)
    expanded = recurring_ical_events.of(cal).between(
        datetime.combine(monday, datetime.min.time(), UTC) - timedelta(days=1),
        datetime.combine(monday, datetime.min.time(), UTC) + timedelta(days=60),
    )
    got = {
        (str(e["STATUS"]), e["DTSTART"].dt.astimezone(UTC), e["DTEND"].dt.astimezone(UTC), str(e["SUMMARY"]))
        for e in expanded
    }
    rows = await db_conn.fetch(
        "SELECT status, start_time, end_time, title FROM bookings WHERE user_id = $1",
        uuid.UUID(user["user"]["id"]),
    )
    want = {
        (
            "CANCELLED" if r["status"] == "cancelled" else "CONFIRMED",
            r["start_time"],
            r["end_time"],
            r["title"],
        )
        for r in rows
    }
    assert got == want
    assert len(want) == 5 and {w[0] for w in want} == {"CONFIRMED", "CANCELLED"}
    assert len({str(e["UID"]) for e in cal.walk("VEVENT") if "RRULE" in e}) == 2  # the split
