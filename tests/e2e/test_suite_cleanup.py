"""`make test` on a fresh machine starts embedded servers for the session: they leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT


@pytest.mark.timeout(120)
def test_an_embedded_test_session_removes_its_servers_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TEST_DATABASE_URL", "TEST_REDIS_URL")}
    env["TMPDIR"] = str(tmp_path)
    run = subprocess.run(  # one quick test that needs the database, so the session starts both servers
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_migrations.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("bk-")) == []
