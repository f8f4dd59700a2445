"""Capacity across processes: two real web servers, many users, one resource, a storm of contended writes.

Resource actors serialize a resource's writes inside one process only; across processes PostgreSQL is the
last word (the exclusion constraint for capacity 1, the resource's row lock and the overlap count for
capacity N). Every outcome below is deterministic by construction, and the database is checked
afterwards with SQL of its own: at no instant more active bookings of a resource than its capacity.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.processes import WebProcess, running_webs
from tests.support import unique_email
from tests.ws_support import ask, events_until_pong, next_frame

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USERS = 200
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)
ADMIN_PASSWORD = "resource admin password"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class Stack:
    urls: list[str]
    admin: str  # access token
    users: list[tuple[str, str]]  # (user id, access token)
    database_url: str
    http: aiohttp.ClientSession

    async def send(
        self, n: int, method: str, path: str, token: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        url = f"{self.urls[n % len(self.urls)]}{path}"
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, url, json=body, headers=headers, timeout=REQUEST_TIMEOUT) as r:
            text = await r.text()
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, text

    async def resource(self, **fields: Any) -> str:
        body = {"name": f"Race {uuid.uuid4().hex[:10]}", **fields}
        status, created = await self.send(0, "POST", "/api/resources", self.admin, body)
        assert status == 201, created
        resource_id: str = created["id"]
        return resource_id


@pytest.fixture(scope="module")
def web(database_url: str, redis_url: str) -> Iterator[tuple[list[WebProcess], str]]:
    admin_email = unique_email("race-admin")
    # Small pools: the shared PostgreSQL (max_connections 100) also serves other sessions' tests.
    extra = {"ADMIN_EMAIL": admin_email, "ADMIN_PASSWORD": ADMIN_PASSWORD, "DB_POOL_SIZE": "4"}
    with running_webs(2, database_url, redis_url, **extra) as procs:
        yield procs, admin_email


@pytest.fixture(scope="module")
def accounts(web: tuple[list[WebProcess], str]) -> tuple[str, list[tuple[str, str]]]:
    """The admin's token and USERS registered users, once for the module (argon2 is slow on purpose)."""
    procs, admin_email = web
    return asyncio.run(_accounts([p.base_url for p in procs], admin_email))


async def _accounts(urls: list[str], admin_email: str) -> tuple[str, list[tuple[str, str]]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{urls[0]}/api/auth/login", json={"email": admin_email, "password": ADMIN_PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            admin = (await resp.json())["accessToken"]

        async def one(n: int) -> tuple[str, str]:
            body = {"email": unique_email(f"race{n}"), "password": "correct horse battery", "name": f"R{n}"}
            async with http.post(f"{urls[n % 2]}/api/auth/register", json=body) as resp:
                assert resp.status == 201, await resp.text()
                data = await resp.json()
            return data["user"]["id"], data["accessToken"]

        users: list[tuple[str, str]] = []
        for chunk in range(0, USERS, 20):  # argon2 is CPU-bound: a few at a time
            users += await asyncio.gather(*(one(n) for n in range(chunk, min(chunk + 20, USERS))))
    return admin, users


@pytest.fixture
async def stack(
    web: tuple[list[WebProcess], str], accounts: tuple[str, list[tuple[str, str]]], database_url: str
) -> AsyncIterator[Stack]:
    admin, users = accounts
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        yield Stack([p.base_url for p in web[0]], admin, users, database_url, http)


async def max_overlap(database_url: str, resource_id: str) -> int:
    """The most active bookings of the resource at one instant, busy ranges (buffers) included: the
    count of half-open ranges covering a point only rises at a range's start, so check every start."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        value = await conn.fetchval(
            """
            SELECT coalesce(max(covering), 0) FROM (
                SELECT (
                    SELECT count(*) FROM bookings b
                    WHERE b.resource_id = a.resource_id
                      AND b.status IN ('scheduled', 'in-progress')
                      AND b.busy_start <= a.busy_start AND b.busy_end > a.busy_start
                ) AS covering
                FROM bookings a
                WHERE a.resource_id = $1 AND a.status IN ('scheduled', 'in-progress')
            ) points
            """,
            uuid.UUID(resource_id),
        )
        return int(value)
    finally:
        await conn.close()


async def active_ids(database_url: str, resource_id: str) -> set[str]:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT id FROM bookings WHERE resource_id = $1 AND status IN ('scheduled', 'in-progress')",
            uuid.UUID(resource_id),
        )
        return {str(r["id"]) for r in rows}
    finally:
        await conn.close()


def base_time(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def assert_no_5xx(outcomes: list[tuple[int, Any]]) -> None:
    for status, body in outcomes:
        assert status < 500, (status, body)


async def test_200_creates_for_one_slot_of_a_capacity_5_resource_give_exactly_5_wins(stack: Stack) -> None:
    resource = await stack.resource(capacity=5, bufferAfterMinutes=10)
    start = base_time(4)
    body = {"title": "class", "startTime": iso(start), "endTime": iso(start + timedelta(hours=1))}
    outcomes = await asyncio.gather(
        *(
            stack.send(n, "POST", "/api/booking", token, {**body, "resourceId": resource})
            for n, (_, token) in enumerate(stack.users)
        )
    )
    assert_no_5xx(outcomes)
    statuses = sorted(status for status, _ in outcomes)
    assert statuses.count(201) == 5 and statuses.count(409) == 195, statuses
    winners = {b["id"] for s, b in outcomes if s == 201}
    for status, problem in outcomes:
        if status == 409:
            assert problem["detail"] == "resource full", problem
            assert set(problem["conflictingIds"]) <= winners and len(problem["conflictingIds"]) == 5, problem
    assert await active_ids(stack.database_url, resource) == winners  # no lost booking, no extra one
    assert await max_overlap(stack.database_url, resource) == 5


async def test_200_creates_on_a_capacity_1_resource_with_buffers_give_exactly_one_win(stack: Stack) -> None:
    # 30 minutes before and after: bookings starting up to 75 minutes apart collide through their
    # buffers even where the bookings themselves do not overlap (30-minute bookings, 0-45 minutes apart).
    resource = await stack.resource(capacity=1, bufferBeforeMinutes=30, bufferAfterMinutes=30)
    start = base_time(5)
    requests = []
    for n, (_, token) in enumerate(stack.users):
        s = start + timedelta(minutes=5 * (n % 10))
        body = {
            "title": "room",
            "startTime": iso(s),
            "endTime": iso(s + timedelta(minutes=30)),
            "resourceId": resource,
        }
        requests.append(stack.send(n, "POST", "/api/booking", token, body))
    outcomes = await asyncio.gather(*requests)
    assert_no_5xx(outcomes)
    statuses = [s for s, _ in outcomes]
    assert statuses.count(201) == 1 and statuses.count(409) == USERS - 1, sorted(statuses)
    (winner,) = [b["id"] for s, b in outcomes if s == 201]
    named = {b.get("conflictingId") for s, b in outcomes if s == 409}
    assert named == {winner}, named  # every loser is told which booking is in the way
    assert await active_ids(stack.database_url, resource) == {winner}
    assert await max_overlap(stack.database_url, resource) == 1


async def test_100_concurrent_moves_onto_a_slot_with_two_seats_left_then_98_onto_the_full_slot(
    stack: Stack,
) -> None:
    resource = await stack.resource(capacity=5)
    start = base_time(40)
    target = {"startTime": iso(start), "endTime": iso(start + timedelta(hours=1))}
    # Three seats of the target slot taken; 100 more bookings of other users, each in its own slot.
    for n in range(3):
        status, made = await stack.send(
            n, "POST", "/api/booking", stack.users[n][1], {"title": "held", **target, "resourceId": resource}
        )
        assert status == 201, made
    movers: list[tuple[str, str]] = []
    for n in range(3, 103):
        s = start + timedelta(hours=2 + 2 * n)
        status, made = await stack.send(
            n,
            "POST",
            "/api/booking",
            stack.users[n][1],
            {
                "title": "mover",
                "startTime": iso(s),
                "endTime": iso(s + timedelta(hours=1)),
                "resourceId": resource,
            },
        )
        assert status == 201, made
        movers.append((made["id"], stack.users[n][1]))
    outcomes = await asyncio.gather(
        *(
            stack.send(n, "PATCH", f"/api/booking/{bid}", token, target)
            for n, (bid, token) in enumerate(movers)
        )
    )
    assert_no_5xx(outcomes)
    statuses = [s for s, _ in outcomes]
    assert statuses.count(200) == 2 and statuses.count(409) == 98, sorted(statuses)
    for status, problem in outcomes:
        if status == 409:
            assert problem["detail"] == "resource full" and len(problem["conflictingIds"]) == 5, problem
    assert await max_overlap(stack.database_url, resource) == 5
    assert len(await active_ids(stack.database_url, resource)) == 103  # every booking still there
    # Now the slot is full: the 98 others at once again, and none gets in.
    losers = [m for m, (status, _) in zip(movers, outcomes, strict=True) if status == 409]
    again = await asyncio.gather(
        *(
            stack.send(n, "PATCH", f"/api/booking/{bid}", token, target)
            for n, (bid, token) in enumerate(losers)
        )
    )
    assert_no_5xx(again)
    assert [s for s, _ in again] == [409] * 98, sorted(s for s, _ in again)
    assert await max_overlap(stack.database_url, resource) == 5


async def test_cancel_then_rebook_races_never_overbook_or_lose_a_seat(stack: Stack) -> None:
    resource = await stack.resource(capacity=1)
    start = base_time(60)
    slot = {
        "title": "rebook",
        "startTime": iso(start),
        "endTime": iso(start + timedelta(hours=1)),
        "resourceId": resource,
    }
    holder = 0
    status, held = await stack.send(0, "POST", "/api/booking", stack.users[holder][1], slot)
    assert status == 201, held
    for round_ in range(10):
        contenders = [1 + (round_ * 19 + k) % (USERS - 1) for k in range(19)]
        contenders = [c for c in contenders if c != holder]
        cancel = stack.send(
            round_,
            "PATCH",
            f"/api/booking/{held['id']}/status",
            stack.users[holder][1],
            {"status": "cancelled"},
        )
        creates = [
            stack.send(round_ + k + 1, "POST", "/api/booking", stack.users[c][1], slot)
            for k, c in enumerate(contenders)
        ]
        cancelled, *outcomes = await asyncio.gather(cancel, *creates)
        assert cancelled[0] == 200, cancelled
        assert_no_5xx(outcomes)
        wins = [(c, b) for c, (s, b) in zip(contenders, outcomes, strict=True) if s == 201]
        assert all(s in (201, 409) for s, _ in outcomes), outcomes
        assert len(wins) <= 1, wins
        assert await max_overlap(stack.database_url, resource) <= 1
        if not wins:  # every create ran before the cancel committed: the seat must be free now
            status, again = await stack.send(
                round_, "POST", "/api/booking", stack.users[contenders[0]][1], slot
            )
            assert status == 201, again
            wins = [(contenders[0], again)]
        holder, held = wins[0]
        assert await active_ids(stack.database_url, resource) == {held["id"]}


async def test_watchers_on_the_other_process_get_busy_changes_without_private_details(stack: Stack) -> None:
    resource = await stack.resource(capacity=3, bufferBeforeMinutes=10)
    start = base_time(80)
    (owner_id, owner), (_, watcher_token) = stack.users[150], stack.users[151]
    ws_b = stack.urls[1].replace("http://", "ws://")
    watcher = await stack.http.ws_connect(f"{ws_b}/ws/?token={watcher_token}")
    owner_ws = await stack.http.ws_connect(f"{ws_b}/ws/?token={owner}")
    try:
        joined = await ask(watcher, "join-resource-room", {"resourceId": resource})
        assert joined["event"] == "join-resource-room", joined
        await ask(owner_ws, "ping")
        body = {
            "title": "Board meeting",
            "startTime": iso(start),
            "endTime": iso(start + timedelta(hours=1)),
            "resourceId": resource,
        }
        status, made = await stack.send(0, "POST", "/api/booking", owner, body)  # on process A
        assert status == 201, made
        event = await next_frame(watcher)
        assert event["event"] == "resource.busy.changed", event
        assert event["data"] == {
            "resourceId": resource,
            "start": iso(start - timedelta(minutes=10)),
            "end": iso(start + timedelta(hours=1)),
        }
        assert "Board meeting" not in str(event) and owner_id not in str(event)
        own = await next_frame(owner_ws)  # the owner's sockets keep the full booking events
        assert own["event"] == "booking.created" and own["data"]["title"] == "Board meeting"
        # Nothing else reached the watcher: no booking.* event of someone else's.
        assert [f["event"] for f in await events_until_pong(watcher)] == []
    finally:
        await watcher.close()
        await owner_ws.close()


async def test_bookings_swapping_resources_both_ways_at_once_never_deadlock(stack: Stack) -> None:
    """Half the bookings move from A to B while the other half move from B to A, on both processes: each
    move locks both resource rows, always in id order, so no two writers wait on each other in a cycle
    (a 40P01 would end as a 409 here, so every move must win)."""
    a = await stack.resource(capacity=1000)
    b = await stack.resource(capacity=1000)
    start = base_time(90)
    made: list[tuple[str, str, str]] = []  # (booking id, token, the resource it moves to)
    for n in range(100):
        s = start + timedelta(hours=2 * n)
        here, there = (a, b) if n % 2 == 0 else (b, a)
        body = {
            "title": "swap",
            "startTime": iso(s),
            "endTime": iso(s + timedelta(hours=1)),
            "resourceId": here,
        }
        status, booking = await stack.send(n, "POST", "/api/booking", stack.users[n][1], body)
        assert status == 201, booking
        made.append((booking["id"], stack.users[n][1], there))
    outcomes = await asyncio.gather(
        *(
            stack.send(n, "PATCH", f"/api/booking/{bid}", token, {"resourceId": there})
            for n, (bid, token, there) in enumerate(made)
        )
    )
    assert [s for s, _ in outcomes] == [200] * 100, [(s, b) for s, b in outcomes if s != 200][:3]
    assert all(body["resourceId"] == there for (_, body), (_, _, there) in zip(outcomes, made, strict=True))
    assert len(await active_ids(stack.database_url, a)) == len(await active_ids(stack.database_url, b)) == 50


async def test_20_concurrent_overlapping_weekly_series_commit_exactly_one_per_slot(stack: Stack) -> None:
    """Ten slots, two series for each (weekly 8 times, and every other week 4 times, which meets it on four
    dates): whatever the order across the two processes, exactly one series of each pair commits, all of
    its occurrences, and the loser writes nothing."""
    resource = await stack.resource(capacity=1, bufferAfterMinutes=10)
    start = base_time(3)
    requests = []
    for n in range(20):
        slot = start + timedelta(hours=n // 2)
        rule = "FREQ=WEEKLY;COUNT=8" if n % 2 == 0 else "FREQ=WEEKLY;INTERVAL=2;COUNT=4"
        body = {
            "title": f"series {n}",
            "startTime": iso(slot),
            "endTime": iso(slot + timedelta(minutes=50)),
            "resourceId": resource,
            "recurrence": {"rrule": rule, "timeZone": "UTC"},
        }
        requests.append(stack.send(n, "POST", "/api/booking", stack.users[n][1], body))
    outcomes = await asyncio.gather(*requests)
    assert_no_5xx(outcomes)
    for pair in range(10):
        statuses = sorted(outcomes[2 * pair + k][0] for k in (0, 1))
        assert statuses == [201, 409], (pair, outcomes[2 * pair], outcomes[2 * pair + 1])
    winners = {o["id"] for s, body in outcomes if s == 201 for o in body["occurrences"]}
    for status, body in outcomes:
        if status == 409:
            assert body["conflicts"] and all(set(c["conflictingIds"]) <= winners for c in body["conflicts"])
    assert await active_ids(stack.database_url, resource) == winners
    assert await max_overlap(stack.database_url, resource) == 1


async def test_20_concurrent_series_with_skip_fill_a_capacity_2_resource_exactly(stack: Stack) -> None:
    resource = await stack.resource(capacity=2)
    start = base_time(2)
    body = {
        "title": "class",
        "startTime": iso(start),
        "endTime": iso(start + timedelta(hours=1)),
        "resourceId": resource,
        "recurrence": {"rrule": "FREQ=DAILY;COUNT=6", "timeZone": "UTC"},
        "conflictPolicy": "skip",
    }
    outcomes = await asyncio.gather(
        *(stack.send(n, "POST", "/api/booking", stack.users[40 + n][1], body) for n in range(20))
    )
    assert_no_5xx(outcomes)
    created = [b for s, b in outcomes if s == 201]
    booked = [o for b in created for o in b["occurrences"]]
    assert len(booked) == 2 * 6, [s for s, _ in outcomes]  # every day's two seats, no more
    for s, b in outcomes:
        if s == 201:
            assert len(b["occurrences"]) + len(b["skipped"]) == 6
        else:
            assert s == 409 and len(b["conflicts"]) == 6, b
    assert await active_ids(stack.database_url, resource) == {o["id"] for o in booked}
    assert await max_overlap(stack.database_url, resource) == 2
