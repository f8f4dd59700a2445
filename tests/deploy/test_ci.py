""".ci/run runs the README's `make test` as a fresh machine does (embedded servers), not only against
this machine's services: run with a recording `make` on PATH, it must call `make test` once with no
TEST_* / DATABASE_URL / REDIS_URL set, whatever the calling environment exports."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.processes import ROOT

RECORDER = """#!/usr/bin/env bash
echo "$* db=${TEST_DATABASE_URL-unset} redis=${TEST_REDIS_URL-unset} app=${DATABASE_URL-unset}" >> "$CALLS"
"""


def test_ci_runs_make_test_on_the_embedded_path_first_then_on_the_machines_services(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("make", RECORDER), ("nginx", "#!/bin/sh\n")):
        tool = bin_dir / name
        tool.write_text(text)
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        # What a developer's shell (or an older CI) may export: .ci/run must not let it through.
        "TEST_DATABASE_URL": "postgresql://example@127.0.0.1:1/x",
        "TEST_REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://example@127.0.0.1:1/app",
    }
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    made = calls.read_text().splitlines()
    tests = [line for line in made if line.split()[0] == "test"]
    assert tests[0] == "test db=unset redis=unset app=unset", made  # the README's path comes first
    assert len(tests) == 2 and "db=postgresql://" in tests[1] and "redis=redis://" in tests[1], made
    targets = {line.split()[0] for line in made}
    assert targets >= {"lint", "compose-cli", "test", "test-slow", "test-fresh-clone"}
