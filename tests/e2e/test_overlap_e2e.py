"""The no-overlap guarantee across processes: two real web servers, one user, a storm of contended writes.

Actors serialize a user's writes inside one process only; across processes the exclusion constraint is
the last word. The slots are built so the outcome is deterministic: every candidate in a group overlaps
every other candidate of that group, and groups are disjoint, so exactly one write wins per group.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.processes import WebProcess, start_web, stop
from tests.support import unique_email

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GROUPS = 3  # disjoint groups of contended slots
SLOTS_PER_GROUP = 2  # each slot overlaps its neighbour in the group (6 slots in all)
CREATES_PER_SLOT = 10  # 60 creates
MOVERS_PER_GROUP = 2  # 6 PATCHes moving an existing booking into a contended slot
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
ACTIVE = ("scheduled", "in-progress")


@pytest.fixture
def web(database_url: str, redis_url: str) -> Iterator[list[WebProcess]]:
    env = {
        "NODE_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"e2e{uuid.uuid4().hex[:10]}:",
        "AUTH_RATE_LIMIT_PER_IP": "100000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "100000",
        "API_RATE_LIMIT_PER_USER": "100000",
        # Small pools: the shared PostgreSQL (max_connections 100) also serves other sessions' tests.
        "DB_POOL_SIZE": "4",
    }
    procs = start_web(2, env)
    try:
        yield procs
    finally:
        exits = stop(procs)
        # SIGTERM is a graceful shutdown: aiohttp exits 0 after its cleanup contexts ran.
        assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def group_window(base: datetime, group: int) -> tuple[datetime, datetime]:
    start = base + timedelta(hours=4 * group)
    return start, start + timedelta(hours=2)


def slot(base: datetime, group: int, index: int) -> tuple[datetime, datetime]:
    """Slot `index` of `group`: one hour, shifted by 30 minutes per index (all of a group overlap)."""
    start = group_window(base, group)[0] + timedelta(minutes=30 * index)
    return start, start + timedelta(hours=1)


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def send(
    session: aiohttp.ClientSession, method: str, url: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | str]:
    async with session.request(
        method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT
    ) as resp:
        text = await resp.text()
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, text


async def test_concurrent_overlapping_writes_across_two_processes_leave_one_winner_per_slot(
    web: list[WebProcess], database_url: str
) -> None:
    urls = [w.base_url for w in web]
    base = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{urls[0]}/api/auth/register",
            json={"email": unique_email("e2e"), "password": "correct horse battery", "name": "E2E"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            registered = await resp.json()
        token = registered["accessToken"]

        # Movers: bookings far from every group, each later PATCHed (once) into a contended slot.
        movers: list[str] = []
        for n in range(GROUPS * MOVERS_PER_GROUP):
            far = base + timedelta(days=10, hours=3 * n)
            status, created = await send(
                session,
                "POST",
                f"{urls[n % 2]}/api/booking",
                token,
                {"title": f"mover {n}", "startTime": iso(far), "endTime": iso(far + timedelta(hours=1))},
            )
            assert status == 201, created
            assert isinstance(created, dict)
            movers.append(created["id"])

        # (kind, group, process, coroutine): creates and PATCHes interleaved, alternating processes.
        requests: list[tuple[str, int, int, Any]] = []
        for group in range(GROUPS):
            for index in range(SLOTS_PER_GROUP):
                start, end = slot(base, group, index)
                for n in range(CREATES_PER_SLOT):
                    process = (index + n) % 2
                    body = {"title": f"g{group} s{index} #{n}", "startTime": iso(start), "endTime": iso(end)}
                    requests.append(
                        (
                            "create",
                            group,
                            process,
                            send(session, "POST", f"{urls[process]}/api/booking", token, body),
                        )
                    )
            for m in range(MOVERS_PER_GROUP):
                mover = movers[group * MOVERS_PER_GROUP + m]
                start, end = slot(base, group, m % SLOTS_PER_GROUP)
                process = m % 2
                body = {"startTime": iso(start), "endTime": iso(end)}
                url = f"{urls[process]}/api/booking/{mover}"
                requests.append(("patch", group, process, send(session, "PATCH", url, token, body)))
        # Interleave the groups so creates and PATCHes of every group race each other.
        random.Random(GROUPS).shuffle(requests)

        responses = await asyncio.wait_for(asyncio.gather(*(r[3] for r in requests)), 60)

    outcomes = [
        (kind, group, process, status, body)
        for (kind, group, process, _), (status, body) in zip(requests, responses, strict=True)
    ]
    assert len(outcomes) == GROUPS * (SLOTS_PER_GROUP * CREATES_PER_SLOT + MOVERS_PER_GROUP)

    # Never a 5xx, never anything but a win or a documented conflict.
    for kind, _group, _process, status, body in outcomes:
        allowed = {201, 409} if kind == "create" else {200, 409}
        assert status in allowed, (kind, status, body)

    # Every 409 names the booking in the way.
    conflicting_ids: set[str] = set()
    for _kind, _group, _process, status, body in outcomes:
        if status == 409:
            assert isinstance(body, dict), body
            assert body.get("conflictingId"), body
            conflicting_ids.add(body["conflictingId"])

    # Both processes took part, and both returned winners or losers (not e.g. all 5xx on one side).
    for process in (0, 1):
        assert sum(1 for o in outcomes if o[2] == process) > 0

    # Exactly one winner per group: every candidate of a group overlaps every other one.
    for group in range(GROUPS):
        wins = [o for o in outcomes if o[1] == group and o[3] in (200, 201)]
        assert len(wins) == 1, (group, [(o[0], o[2], o[3]) for o in wins])
        win_start, win_end = parse(wins[0][4]["startTime"]), parse(wins[0][4]["endTime"])
        window = group_window(base, group)
        assert window[0] <= win_start < win_end <= window[1]

    user_id = uuid.UUID(registered["user"]["id"])
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        overlapping = await conn.fetch(
            """
            SELECT a.id AS a, b.id AS b
            FROM bookings a
            JOIN bookings b ON a.user_id = b.user_id AND a.id < b.id
            WHERE a.user_id = $1
              AND a.status = ANY($2::text[]) AND b.status = ANY($2::text[])
              AND tstzrange(a.start_time, a.end_time, '[)') && tstzrange(b.start_time, b.end_time, '[)')
            """,
            user_id,
            list(ACTIVE),
        )
        assert overlapping == [], overlapping

        for group in range(GROUPS):
            start, end = group_window(base, group)
            in_window = await conn.fetchval(
                """
                SELECT count(*) FROM bookings
                WHERE user_id = $1 AND status = ANY($2::text[])
                  AND tstzrange(start_time, end_time, '[)') && tstzrange($3, $4, '[)')
                """,
                user_id,
                list(ACTIVE),
                start,
                end,
            )
            assert in_window == 1, (group, in_window)

        # Rows: the movers (moved or not) plus one created winner per group that a create won.
        created_wins = sum(1 for o in outcomes if o[0] == "create" and o[3] == 201)
        total = await conn.fetchval("SELECT count(*) FROM bookings WHERE user_id = $1", user_id)
        assert total == len(movers) + created_wins

        # Every named conflict is a real booking of this user.
        known = await conn.fetchval(
            "SELECT count(*) FROM bookings WHERE user_id = $1 AND id = ANY($2::uuid[])",
            user_id,
            [uuid.UUID(i) for i in conflicting_ids],
        )
        assert known == len(conflicting_ids)
    finally:
        await conn.close()


async def test_one_idempotency_key_sent_to_both_processes_at_once_creates_one_booking(
    web: list[WebProcess], database_url: str
) -> None:
    """Retries of one create racing on two processes: every answer is that one booking (the key is
    claimed first, so the loser waits for the winner's commit and replays it instead of a 409)."""
    urls = [w.base_url for w in web]
    start = (datetime.now(UTC) + timedelta(days=5)).replace(second=0, microsecond=0)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{urls[0]}/api/auth/register",
            json={"email": unique_email("idem"), "password": "correct horse battery", "name": "I"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            registered = await resp.json()
        headers = {"Authorization": f"Bearer {registered['accessToken']}"}
        for round_ in range(5):
            slot_start = start + timedelta(hours=2 * round_)
            body = {
                "title": "retry",
                "startTime": iso(slot_start),
                "endTime": iso(slot_start + timedelta(hours=1)),
            }
            key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}

            async def post(n: int, body: dict[str, Any] = body, key: dict[str, str] = key) -> tuple[int, Any]:
                url = f"{urls[n % 2]}/api/booking"
                async with session.post(
                    url, json=body, headers={**headers, **key}, timeout=REQUEST_TIMEOUT
                ) as r:
                    return r.status, await r.json(content_type=None)

            answers = await asyncio.gather(*(post(n) for n in range(6)))
            assert {status for status, _ in answers} == {201}, answers
            assert len({data["id"] for _, data in answers}) == 1, answers

    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM bookings WHERE user_id = $1", uuid.UUID(registered["user"]["id"])
        )
    finally:
        await conn.close()
    assert rows == 5
