"""A user's own time zone (PATCH /api/auth/me): set and read back, hostile input, the default zone of
availability labels, and a second web process that sees the change at once although it caches users."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.conftest import Client, Registrar, auth
from tests.integration.test_availability import WEEKDAYS_9_TO_17, get, local, next_weekday, put_hours, z
from tests.integration.test_resources import new_resource
from tests.processes import WebProcess, running_webs
from tests.support import unique_email

PASSWORD = "correct horse battery"


async def patch_me(client: Client, session: dict[str, Any], payload: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.patch("/api/auth/me", json=payload, headers=auth(session))
    return resp.status, await resp.json()


async def me(client: Client, session: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get("/api/auth/me", headers=auth(session))
    assert resp.status == 200
    found: dict[str, Any] = await resp.json()
    return found


async def test_a_new_account_is_utc_and_its_zone_and_name_can_be_changed(
    client: Client, register: Registrar
) -> None:
    session = await register(name="Zoe")
    assert session["user"]["timeZone"] == "UTC"
    assert (await me(client, session))["timeZone"] == "UTC"

    status, changed = await patch_me(client, session, {"timeZone": "Europe/Berlin"})
    assert status == 200, changed
    assert changed["timeZone"] == "Europe/Berlin" and changed["name"] == "Zoe"
    assert changed["updatedAt"] >= session["user"]["updatedAt"]
    # The same process cached the row a moment ago (AUTH_CACHE_SECONDS): the change drops it.
    assert (await me(client, session))["timeZone"] == "Europe/Berlin"

    status, changed = await patch_me(client, session, {"name": "Zoë", "timeZone": "Asia/Kathmandu"})
    assert status == 200, changed
    assert (changed["name"], changed["timeZone"]) == ("Zoë", "Asia/Kathmandu")
    assert (await me(client, session))["name"] == "Zoë"

    # The login answer and the admin's list carry it too.
    resp = await client.post(
        "/api/auth/login", json={"email": session["user"]["email"], "password": PASSWORD}
    )
    assert (await resp.json())["user"]["timeZone"] == "Asia/Kathmandu"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"timeZone": "Mars/Olympus_Mons"}, "timeZone"),
        ({"timeZone": "europe/berlin"}, "timeZone"),  # IANA names are case-sensitive
        ({"timeZone": "posix/Europe/Berlin"}, "timeZone"),  # ZoneInfo takes it; the list does not
        ({"timeZone": "../../../etc/passwd"}, "timeZone"),
        ({"timeZone": "Europe/" + "B" * 10_000}, "timeZone"),
        ({"timeZone": "Europe/Berlin\u0000"}, "timeZone"),
        ({"timeZone": ""}, "timeZone"),
        ({"timeZone": 1}, "timeZone"),
        ({"timeZone": None}, "timeZone"),
        ({"timeZone": ["Europe/Berlin"]}, "timeZone"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"role": "admin"}, "role"),
        ({"email": "other@example.com"}, "email"),
        ({}, "body"),
    ],
)
async def test_hostile_changes_are_400_naming_the_field_and_change_nothing(
    client: Client, register: Registrar, payload: dict[str, Any], field: str
) -> None:
    session = await register()
    status, problem = await patch_me(client, session, payload)
    assert status == 400, problem
    assert field in [e["field"] for e in problem.get("errors", [])], problem
    assert len(problem["detail"]) < 500  # a 10 KB name is not echoed back
    after = await me(client, session)
    assert (after["timeZone"], after["role"], after["name"]) == ("UTC", "user", "Test")


async def test_a_body_that_is_not_an_object_is_400(client: Client, register: Registrar) -> None:
    session = await register()
    for payload in (["Europe/Berlin"], "Europe/Berlin", 7):
        status, problem = await patch_me(client, session, payload)
        assert status == 400, (payload, problem)


async def test_changing_your_zone_needs_a_token(client: Client) -> None:
    resp = await client.patch("/api/auth/me", json={"timeZone": "Europe/Berlin"})
    assert resp.status == 401


# --- availability labels ---------------------------------------------------------------------------


@pytest.fixture
async def room(client: Client, admin: dict[str, Any]) -> dict[str, Any]:
    """A Berlin room open Monday to Friday 09:00-17:00."""
    resource = await new_resource(client, admin, timeZone="Europe/Berlin")
    status, _ = await put_hours(client, admin, resource["id"], {"weekly": WEEKDAYS_9_TO_17, "overrides": []})
    assert status == 200
    return resource


async def test_slot_labels_default_to_the_callers_zone_else_the_resources(
    client: Client, register: Registrar, room: dict[str, Any]
) -> None:
    utc_user, new_yorker = await register(), await register()
    assert (await patch_me(client, new_yorker, {"timeZone": "America/New_York"}))[0] == 200
    monday = next_weekday(1)
    params = {
        "resourceId": room["id"],
        "from": z(local(monday, 0)),
        "to": z(local(monday + timedelta(days=1), 0)),
        "duration": 60,
    }

    _, berlin = await get(client, utc_user, "/api/availability/slots", **params)
    assert berlin["timeZone"] == "Europe/Berlin"  # a caller still at UTC: the resource's zone
    assert berlin["data"][0]["localStart"] == local(monday, 9).isoformat()

    status, mine = await get(client, new_yorker, "/api/availability/slots", **params)
    assert status == 200, mine
    assert mine["timeZone"] == "America/New_York"
    first = local(monday, 9).astimezone(ZoneInfo("America/New_York"))
    assert mine["data"][0]["localStart"] == first.isoformat()
    # Only the labels move: the same instants, in UTC with Z, on the resource's own grid.
    assert [(s["start"], s["end"]) for s in mine["data"]] == [(s["start"], s["end"]) for s in berlin["data"]]
    assert all(s["start"].endswith("Z") for s in mine["data"])

    _, asked = await get(
        client, new_yorker, "/api/availability/slots", **{**params, "timeZone": "Asia/Tokyo"}
    )
    assert asked["timeZone"] == "Asia/Tokyo" and asked["data"][0]["localStart"].endswith("+09:00")
    _, utc = await get(client, new_yorker, "/api/availability/slots", **{**params, "timeZone": "UTC"})
    assert utc["timeZone"] == "UTC" and utc["data"][0]["localStart"].endswith("+00:00")

    status, found = await get(
        client, new_yorker, "/api/availability/next", resourceId=room["id"], duration=60, after=params["from"]
    )
    assert status == 200, found
    assert found["timeZone"] == "America/New_York"
    assert found["slot"]["localStart"] == first.isoformat()


# --- a second web process --------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def zone_on(http: aiohttp.ClientSession, base_url: str, token: str) -> str:
    async with http.get(f"{base_url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        zone: str = (await resp.json())["timeZone"]
        return zone


@pytest.fixture
def two_webs(database_url: str, redis_url: str) -> Iterator[list[WebProcess]]:
    # A cache lifetime far beyond the test: the other process can only learn it from the bus signal.
    with running_webs(2, database_url, redis_url, AUTH_CACHE_SECONDS="300") as procs:
        yield procs


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_a_change_on_one_web_process_is_seen_at_once_on_the_other(
    two_webs: list[WebProcess], http: aiohttp.ClientSession
) -> None:
    a, b = two_webs
    body = {"email": unique_email("tz"), "password": PASSWORD, "name": "T"}
    async with http.post(f"{a.base_url}/api/auth/register", json=body) as resp:
        token = (await resp.json())["accessToken"]
    assert await zone_on(http, b.base_url, token) == "UTC"  # B has cached the row

    headers = {"Authorization": f"Bearer {token}"}
    async with http.patch(
        f"{a.base_url}/api/auth/me", json={"timeZone": "Pacific/Auckland"}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()

    deadline = time.monotonic() + 3.0
    while (zone := await zone_on(http, b.base_url, token)) != "Pacific/Auckland":
        assert time.monotonic() < deadline, f"B still says {zone}"


# --- series ------------------------------------------------------------------------------------------


async def test_a_series_without_a_zone_repeats_in_the_zone_just_set(
    client: Client, register: Registrar
) -> None:
    user = await register()
    assert (await me(client, user))["timeZone"] == "UTC"  # the row is now in this process's cache
    assert (await patch_me(client, user, {"timeZone": "America/New_York"}))[0] == 200
    new_york = ZoneInfo("America/New_York")
    day = next_weekday(1, weeks=2)
    start = datetime.combine(day, dt_time(9, 0), new_york)
    body = {
        "title": "Weekly",
        "startTime": z(start),
        "endTime": z(start + timedelta(minutes=30)),
        "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=3"},
    }
    resp = await client.post("/api/booking", json=body, headers=auth(user))
    assert resp.status == 201, await resp.text()
    series = await resp.json()
    assert series["timeZone"] == "America/New_York"
    # 09:00 in New York each week (whatever its offset that week), not 09:00's UTC instant repeated.
    locals_ = [datetime.fromisoformat(o["startTime"]).astimezone(new_york) for o in series["occurrences"]]
    assert [(d.hour, d.minute) for d in locals_] == [(9, 0)] * 3
