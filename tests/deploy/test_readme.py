"""Every ```bash block of README.md and docs/*.md is either run here, as printed (bash + curl against the
real app on a real TCP port, its `localhost:5000` / `localhost:5001` rewritten to the test's ports), or
named in SKIPPED with the reason it cannot run in a test. A new block fails
`test_every_bash_block_is_run_or_skipped_for_a_reason` until it is given one or the other."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from server.base.settings import Settings
from server.jobs import create_jobs_app
from server.web.keys import DB
from tests.conftest import Client, Registrar
from tests.processes import BOOKING, ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    key: str  # "README.md § Try it", "+ #2" for the second bash block under one heading
    text: str


def bash_blocks() -> dict[str, Block]:
    """Every ```bash block, keyed by its file and the heading it sits under."""
    blocks: dict[str, Block] = {}
    for doc in DOCS:
        heading, fence = "(top)", None
        body: list[str] = []
        seen: dict[str, int] = {}
        for line in doc.read_text(encoding="utf-8").splitlines():
            if fence is None:
                if line.startswith("```"):
                    fence, body = line[3:].strip(), []
                elif found := re.match(r"#{1,4} (.+)", line):
                    heading = found.group(1).strip()
            elif line.startswith("```"):
                if fence in ("bash", "sh", "shell"):  # every shell block, however labelled
                    key = f"{doc.name} § {heading}"
                    seen[key] = seen.get(key, 0) + 1
                    key += f" #{seen[key]}" if seen[key] > 1 else ""
                    blocks[key] = Block(key, "\n".join(body) + "\n")
                fence = None
            else:
                body.append(line)
    return blocks


def block(key: str) -> str:
    blocks = bash_blocks()
    assert key in blocks, f"no bash block {key!r}; the docs have {sorted(blocks)}"
    return blocks[key].text


# Reviewed: the blocks no test runs, and why. Each stays true because of the test named in the reason.
SKIPPED = {
    "README.md § Two commands": "`make run` starts the stack and `make test` is this suite "
    "(tests/deploy/test_fresh_clone.py runs `make run` in a clone)",
    "README.md § Run it yourself": "long-running servers and an interactive prompt, one a line "
    "(tests/deploy/test_cli.py, tests/deploy/test_run_stack.py run them)",
    "BENCHMARKS.md § Benchmarks": "minutes of load "
    "(tests/deploy/test_bench_smoke.py runs the tool at --quick)",
    "BENCHMARKS.md § The run": "the full benchmark, about 7 minutes",
    "DEPLOY.md § Development (the default)": "needs a Docker engine "
    "(tests/deploy/test_deploy.py checks the compose file with Compose's own loader)",
    "DEPLOY.md § Production (`docker compose --profile prod`)": "needs a Docker engine and production "
    "secrets (tests/deploy/test_deploy.py resolves the profiles with Compose's own loader)",
    "FAULTS.md § Faults: PostgreSQL or Redis going away, SIGTERM, a soak": "`make test` is this suite",
    "FAULTS.md § Soak": "the soak runs for minutes (`make test-slow`)",
    "WEBSOCKET.md § Memory per idle connection": "the memory benchmark, minutes "
    "(tests/deploy/test_bench_smoke.py)",
    "WEBHOOKS.md § Quick start": "calls with the reader's $WEBHOOK_ID, each run by "
    "tests/integration/test_webhooks.py "
    "(test_redelivery_and_test_events_reach_the_receiver, test_the_delivery_log_pages_newest_first)",
    "WEBHOOKS.md § Operations": "the CLI against a running stack "
    "(tests/integration/test_webhooks.py::test_the_cli_lists_endpoints_and_replays_what_was_given_up "
    "runs it)",
}

# The blocks the tests below run, each named by the test that runs it.
RUN = {
    "README.md § Try it": "test_the_try_it_session_works_as_printed",
    "README.md § Live updates over WebSocket": "test_the_try_it_session_works_as_printed",
    "README.md § Live updates over WebSocket #2": "test_the_broadcast_example_works_as_printed",
    "README.md § API keys for the job service": "test_the_api_key_session_works_as_printed",
    "README.md § Try it #2": "test_the_readme_resource_session_works_as_printed",
    "README.md § Webhooks": "test_the_webhook_example_works_as_printed",
    "README.md § Availability": "test_the_availability_example_works_as_printed",
    "README.md § Recurring series": "test_the_series_example_works_as_printed",
    "README.md § Calendar feeds": "test_the_calendar_feed_example_works_as_printed",
    "WEBSOCKET.md § Try it": "test_the_websocket_try_it_works_as_printed",
}


def test_every_bash_block_is_run_or_skipped_for_a_reason() -> None:
    found = set(bash_blocks())
    assert not set(RUN) & set(SKIPPED)
    assert found - set(RUN) - set(SKIPPED) == set(), (
        "bash blocks neither run by a test nor skipped with a reason"
    )
    assert set(RUN) | set(SKIPPED) <= found, "RUN/SKIPPED name blocks the docs no longer have"
    tests = set(re.findall(r"^async def (test_\w+)\(", Path(__file__).read_text(), re.M))
    assert set(RUN.values()) <= tests


def test_no_doc_example_needs_jq_or_hard_codes_a_year() -> None:
    """README promises Python and curl are enough; a fixed date stops working once it is past (or beyond
    MAX_ADVANCE_DAYS): examples compute their dates from now."""
    for key, found in bash_blocks().items():
        assert not re.search(r"\bjq\b", found.text), f"{key} uses jq"
        assert not re.search(r"\b20\d\d-\d\d-\d\d", found.text), f"{key} hard-codes a date"


async def run_bash(script: str, ports: dict[int, str], env: dict[str, str] | None = None) -> str:
    """The script under `bash -euo pipefail` from the repository root, each `localhost:<port>` rewritten
    to the test server's address. Runs without blocking the event loop the app serves on."""
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs curl and bash")
    for port, address in ports.items():
        script = script.replace(f"localhost:{port}", address)
    assert "localhost:" not in script, f"a URL the test did not rewrite:\n{script}"
    shell = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert shell.returncode == 0, err.decode()
    return out.decode()


def address(client: Client) -> str:
    return f"{client.server.host}:{client.server.port}"


def json_lines(output: str) -> list[dict[str, Any]]:
    """Each line of the output as one JSON object: two replies glued on one line fail here."""
    documents = []
    for line in output.splitlines():
        try:
            documents.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not one JSON document on this line ({exc}): {line!r}") from exc
        assert isinstance(documents[-1], dict), line
    return documents


async def test_the_try_it_session_works_as_printed(client: Client) -> None:
    """README's Try it, then its WebSocket snippet in the same shell (it uses the session's $TOKEN)."""
    try_it = block("README.md § Try it")
    for call in (
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/me",
        "/api/auth/refresh",
        "/api/auth/logout",
    ):
        assert call in try_it, f"the Try it session does not show {call}"
    output = await run_bash(
        try_it + block("README.md § Live updates over WebSocket"), {5000: address(client)}
    )
    assert "urn:booking:problem" not in output, output  # no call answered with an error
    *replies, logout, ping, bookings = output.splitlines()
    assert logout == "204"
    documents = json_lines("\n".join(replies))
    assert len(documents) == 5, documents  # health, register, me, create, list: one reply a line
    assert documents[0]["status"] == "ok"
    assert documents[1]["user"]["email"] == "test@example.com"  # register
    assert documents[2]["email"] == "test@example.com"
    assert documents[3]["title"] == "Test Booking"
    assert documents[4]["meta"] == {"total": 1, "page": 1, "limit": 10, "totalPages": 1}
    frames = json_lines(f"{ping}\n{bookings}")
    assert frames[0]["event"] == "pong" and frames[0]["id"] == "1"
    assert frames[1]["event"] == "get-bookings" and frames[1]["id"] == "2", frames[1]


async def test_the_websocket_try_it_works_as_printed(client: Client) -> None:
    script = block("WEBSOCKET.md § Try it")
    output = await run_bash(script, {5000: address(client)})
    registered, pong, *frames = json_lines(output)
    assert registered["user"]["email"] == "socket@example.com", registered
    assert pong["event"] == "pong" and pong["id"] == "1"
    assert [f["event"] for f in frames] == ["booking.created", "create-booking"], frames
    assert frames[-1]["id"] == "2"
    assert all(f["data"]["title"] == "Socket Booking" for f in frames)
    # A second run, as the doc says: register answers 409, and the same slot is an error frame, not a hang.
    again, _, *frames = json_lines(await run_bash(script, {5000: address(client)}))
    assert again["status"] == 409, again
    assert [(f["event"], f["id"], f["data"]["status"]) for f in frames] == [("error", "2", 409)], frames


async def test_the_broadcast_example_works_as_printed(client: Client, database_url: str) -> None:
    """Its first line makes the admin with `.venv/bin/booking create-admin`, on the test's database."""
    output = await run_bash(
        block("README.md § Live updates over WebSocket #2"),
        {5000: address(client)},
        {"DATABASE_URL": database_url, "NODE_ENV": "test"},
    )
    lines = output.splitlines()
    assert any("admin@example.com" in line for line in lines[:-1]), output  # create-admin's report
    output = lines[-1]
    [reply] = json_lines(output)
    assert reply["event"] == "system.notification", reply
    assert reply["data"] == {"message": "Maintenance at 18:00 UTC", "data": {"window": "18:00-18:15"}}


async def test_the_api_key_session_works_as_printed(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, database_url: str
) -> None:
    script = block("README.md § API keys for the job service")
    for command in ("booking create-api-key", "booking list-api-keys", "booking revoke-api-key"):
        assert command in script, f"the API key session does not show {command}"
    jobs = await aiohttp_client(create_jobs_app(settings))
    env = {
        "PATH": f"{BOOKING.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "NODE_ENV": "test",
    }
    output = await run_bash(script, {5001: address(jobs)}, env)
    metrics, *rest = output.splitlines()
    assert "inFlight" in json_lines(metrics)[0]  # the JSON metrics, with X-API-Key, on a line of its own
    output = "\n".join(rest)
    assert "reminder_queue_depth" in output  # the Prometheus text, with Bearer
    assert re.search(r"^[0-9a-f]{12}\s+metrics-scraper\s+active", output, flags=re.MULTILINE), output
    assert "revoked at" in output
    assert output.rstrip().endswith("401")  # the revoked key
    assert "bk_" not in output  # the key itself is only ever in $KEY


# --- the README's resource session, as printed -------------------------------------------------------


async def test_the_readme_resource_session_works_as_printed(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs curl and bash")
    client = await make_client(admin_email="admin@example.com", admin_password="admin-pass-1")
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2, "Try it: the session, then the resources part that continues it"
    # The session's user is its own here: the README's own test books test@example.com's slot as printed.
    script = "\n".join(blocks).replace("test@example.com", f"readme-{uuid.uuid4().hex[:10]}@example.com")
    for call in ("/api/resources", "/busy?", '"capacity":1', '"capacity":3', "resourceId"):
        assert call in blocks[1], call
    base = f"http://{client.server.host}:{client.server.port}"
    shell = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script.replace("http://localhost:5000", base),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 90)
    output = out.decode()
    assert shell.returncode == 0, err.decode() + output
    assert '"conflictingId"' in output  # the admin ran into the room's buffer
    assert '"start":' in output and '"title":"Planning"' in output  # busy time, as the admin sees it
    assert re.findall(r"^(ana|ben|cleo|dan) (\d+)$", output, flags=re.MULTILINE) == [
        ("ana", "201"),
        ("ben", "201"),
        ("cleo", "201"),
        ("dan", "409"),
    ]
    assert '"status":"cancelled"' in output
    assert output.rstrip().endswith("204\n204")


async def test_the_webhook_example_works_as_printed(client: Client, register: Registrar) -> None:
    """README's Webhooks block with the Try it session's $TOKEN: an endpoint, its secret shown once."""
    user = await register()
    output = await run_bash(
        block("README.md § Webhooks"), {5000: address(client)}, {"TOKEN": user["accessToken"]}
    )
    [created] = json_lines(output)
    assert created["events"] == ["*"] and created["active"] is True, created
    assert created["secret"].startswith("whsec_")


async def test_the_availability_example_works_as_printed(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    """README's Availability block after the Try it session and its resources part (it uses their $TOKEN,
    $ADMIN and field()): the hours are saved, next and slots answer inside them, free/busy without titles."""
    client = await make_client(admin_email="admin@example.com", admin_password="admin-pass-1")
    email = f"readme-{uuid.uuid4().hex[:10]}@example.com"
    script = "\n".join(
        [block("README.md § Try it"), block("README.md § Try it #2"), block("README.md § Availability")]
    ).replace("test@example.com", email)
    output = await run_bash(script, {5000: address(client)})
    lines = output.splitlines()
    at = lines.index("200")  # the PUT of the hours, after the earlier parts' output
    nxt, found, busy = (json.loads(line) for line in lines[at + 1 : at + 4])
    assert nxt["timeZone"] == "America/New_York" and nxt["slot"] is not None, nxt
    for slot in [nxt["slot"], *found["data"]]:
        local = datetime.fromisoformat(slot["start"].replace("Z", "+00:00")).astimezone(
            ZoneInfo("Europe/Berlin")
        )
        assert local.isoweekday() <= 5 and 9 <= local.hour < 17, slot
    assert found["timeZone"] == "Europe/Berlin" and found["durationMinutes"] == 60
    assert [r["busy"] is not None for r in busy["resources"]] == [True] and len(busy["users"]) == 1
    assert "Planning" not in lines[at + 3]


async def test_the_series_example_works_as_printed(client: Client) -> None:
    """README's Recurring series block after the Try it session (its $TOKEN and field()): ten Mondays at
    09:00 Berlin, one skipped, the rest renamed."""
    email = f"readme-{uuid.uuid4().hex[:10]}@example.com"
    script = "\n".join([block("README.md § Try it"), block("README.md § Recurring series")]).replace(
        "test@example.com", email
    )
    lines = (await run_bash(script, {5000: address(client)})).splitlines()
    assert lines[-2] == "204"
    assert lines[-1] == "Team stand-up 9 FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;COUNT=10"
    async with client.app[DB].connect() as conn:
        starts = await conn.fetch(
            "SELECT b.start_time FROM bookings b JOIN users u ON u.id = b.user_id "
            "WHERE lower(u.email) = $1 AND b.series_id IS NOT NULL",
            email,
        )
    berlin = ZoneInfo("Europe/Berlin")
    assert len(starts) == 9
    assert {
        (r["start_time"].astimezone(berlin).isoweekday(), r["start_time"].astimezone(berlin).hour)
        for r in starts
    } == {(1, 9)}


async def test_the_calendar_feed_example_works_as_printed(client: Client) -> None:
    """README's Calendar feeds block after the Try it session (its $TOKEN, field() and booking): a feed
    URL, the calendar it serves, 304 on its ETag, the list, revoke, then 404."""
    email = f"readme-{uuid.uuid4().hex[:10]}@example.com"
    script = "\n".join([block("README.md § Try it"), block("README.md § Calendar feeds")])
    output = await run_bash(script.replace("test@example.com", email), {5000: address(client)})
    lines = output.splitlines()
    at = lines.index("BEGIN:VCALENDAR")
    calendar = lines[at : lines.index("304")]
    assert "X-WR-CALNAME:Work" in calendar and "BEGIN:VEVENT" in calendar, calendar
    assert "SUMMARY:Test Booking" in calendar, calendar  # the Try it session's booking
    listed, revoked, gone = lines[lines.index("304") + 1 :]
    [feed] = json.loads(listed)["data"]
    assert feed["name"] == "Work" and "url" not in feed and "bkcal_" not in listed
    assert (revoked, gone) == ("204", "404")
