"""Availability across two real web processes: hours set on one reach the other's watchers and its
booking checks at once; a slot offered by one and booked through the other is no longer offered; two
users racing for one offered slot through both get one 201 and one 409."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.processes import WebProcess, running_webs
from tests.support import unique_email
from tests.ws_support import ask, next_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BERLIN = ZoneInfo("Europe/Berlin")
ADMIN_PASSWORD = "availability admin password"


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def web(database_url: str, redis_url: str) -> Iterator[tuple[list[WebProcess], str]]:
    admin_email = unique_email("avail-admin")
    extra = {"ADMIN_EMAIL": admin_email, "ADMIN_PASSWORD": ADMIN_PASSWORD, "DB_POOL_SIZE": "4"}
    with running_webs(2, database_url, redis_url, **extra) as procs:
        yield procs, admin_email


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json(content_type=None) if resp.status != 204 else None


async def test_hours_slots_and_bookings_agree_across_processes(web: tuple[list[WebProcess], str]) -> None:
    procs, admin_email = web
    a, b = (p.base_url for p in procs)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{a}/api/auth/login", json={"email": admin_email, "password": ADMIN_PASSWORD}
        ) as r:
            admin = (await r.json())["accessToken"]
        tokens = []
        for n in range(2):
            body = {"email": unique_email(f"slot{n}"), "password": "correct horse battery", "name": "S"}
            async with http.post(f"{(a, b)[n]}/api/auth/register", json=body) as r:
                assert r.status == 201
                tokens.append((await r.json())["accessToken"])
        alice, bob = tokens
        status, room = await call(
            http,
            "POST",
            f"{a}/api/resources",
            admin,
            {"name": f"Room A {uuid.uuid4().hex[:6]}", "timeZone": "Europe/Berlin"},
        )
        assert status == 201, room

        watcher = await http.ws_connect(
            b.replace("http://", "ws://") + "/ws/", headers={"Authorization": f"Bearer {bob}"}
        )
        joined = await ask(watcher, "join-resource-room", {"resourceId": room["id"]})
        assert joined["event"] == "join-resource-room", joined

        weekly = [{"weekday": d, "start": "09:00", "end": "12:00"} for d in range(1, 8)]
        status, hours = await call(
            http, "PUT", f"{a}/api/resources/{room['id']}/hours", admin, {"weekly": weekly}
        )
        assert status == 200, hours
        event = await next_frame(watcher)
        assert event["event"] == "resource.hours.changed" and event["data"]["resourceId"] == room["id"], event

        day: date = datetime.now(BERLIN).date() + timedelta(days=7)
        # Process B checks the new hours at once (its resource actor re-reads the moved version).
        outside = {
            "title": "early",
            "resourceId": room["id"],
            "startTime": z(datetime.combine(day, time(8), BERLIN)),
            "endTime": z(datetime.combine(day, time(9), BERLIN)),
        }
        status, problem = await call(http, "POST", f"{b}/api/booking", alice, outside)
        assert status == 400 and problem["errors"][0]["field"] == "startTime", problem

        query = urlencode(
            {
                "resourceId": room["id"],
                "from": z(datetime.combine(day, time(0), BERLIN)),
                "to": z(datetime.combine(day, time(23), BERLIN)),
                "duration": 60,
            }
        )
        status, offered = await call(http, "GET", f"{a}/api/availability/slots?{query}", alice)
        assert status == 200 and len(offered["data"]) == 3, offered
        first, second = offered["data"][0], offered["data"][1]

        status, _ = await call(
            http,
            "POST",
            f"{b}/api/booking",
            bob,
            {"title": "b", "resourceId": room["id"], "startTime": first["start"], "endTime": first["end"]},
        )
        assert status == 201
        status, again = await call(http, "GET", f"{a}/api/availability/slots?{query}", alice)
        assert [s["start"] for s in again["data"]] == [s["start"] for s in offered["data"][1:]]

        # Both users want the second slot, one through each process: one gets it, the other a 409.
        race = {"resourceId": room["id"], "startTime": second["start"], "endTime": second["end"]}
        results = await asyncio.gather(
            call(http, "POST", f"{a}/api/booking", alice, {"title": "a", **race}),
            call(http, "POST", f"{b}/api/booking", bob, {"title": "b2", **race}),
        )
        assert sorted(s for s, _ in results) == [201, 409], results
        status, after = await call(http, "GET", f"{b}/api/availability/slots?{query}", alice)
        assert [s["start"] for s in after["data"]] == [offered["data"][2]["start"]]
        await watcher.close()
