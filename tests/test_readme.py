"""The README's "Try it" session, run as printed (bash + curl) against the real app."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from tests.conftest import Client
from tests.processes import ROOT

README = ROOT / "README.md"


def try_it_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Try it", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert found, "README's Try it section has no bash block"
    return found.group(1)


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
