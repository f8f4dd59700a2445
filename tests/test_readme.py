"""The README's "Try it" session, run as printed (bash + curl) against the real app."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable

import pytest

from server.jobs import create_jobs_app
from server.settings import Settings
from tests.conftest import Client
from tests.processes import BOOKING, ROOT

README = ROOT / "README.md"


def bash_block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert found, f"README's {heading} section has no bash block"
    return found.group(1)


def try_it_block() -> str:
    return bash_block("Try it")


async def test_the_try_it_session_works_as_printed(client: Client) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs curl and bash")
    script = try_it_block()
    for call in (
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/me",
        "/api/auth/refresh",
        "/api/auth/logout",
    ):
        assert call in script, f"the Try it session does not show {call}"
    base = f"http://{client.server.host}:{client.server.port}"
    # The app serves on this event loop: run the shell without blocking it.
    shell = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script.replace("http://localhost:5000", base),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    output = out.decode()
    assert shell.returncode == 0, err.decode()
    assert "urn:booking:problem" not in output, output  # no call answered with an error
    assert '"status":"ok"' in output  # /health
    assert output.count('"email":"test@example.com"') >= 2  # register and me
    assert '"title":"Test Booking"' in output
    assert output.rstrip().endswith("204")  # logout


async def test_the_api_key_session_works_as_printed(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, database_url: str
) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs curl and bash")
    script = bash_block("API keys for the job service")
    for command in ("booking create-api-key", "booking list-api-keys", "booking revoke-api-key"):
        assert command in script, f"the API key session does not show {command}"
    jobs = await aiohttp_client(create_jobs_app(settings))
    base = f"http://{jobs.server.host}:{jobs.server.port}"
    env = {
        **os.environ,
        "PATH": f"{BOOKING.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url,
        "NODE_ENV": "test",
    }
    shell = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script.replace("http://localhost:5001", base),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    output = out.decode()
    assert shell.returncode == 0, err.decode()
    assert '"inFlight"' in output  # the JSON metrics, with X-API-Key
    assert "reminder_queue_depth" in output  # the Prometheus text, with Bearer
    assert re.search(r"^[0-9a-f]{12}\s+metrics-scraper\s+active", output, flags=re.MULTILINE), output
    assert "revoked at" in output
    assert output.rstrip().endswith("401")  # the revoked key
    assert "bk_" not in output  # the key itself is only ever in $KEY
