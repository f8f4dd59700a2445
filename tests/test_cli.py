"""The `booking` console script as installed (the real entry point, in a subprocess)."""

from __future__ import annotations

import re
import subprocess

from tests.processes import BOOKING, ROOT

SUBCOMMANDS = (
    "serve",
    "jobs",
    "worker",
    "scheduler",
    "migrate",
    "create-admin",
    "create-api-key",
    "list-api-keys",
    "revoke-api-key",
    "webhooks",
    "up",
)


def _listed_commands(help_text: str) -> dict[str, str]:
    """argparse's COMMAND list: name → its one-line explanation (a long name wraps it to the next line)."""
    lines = help_text.splitlines()
    listed: dict[str, str] = {}
    for i, line in enumerate(lines):
        found = re.match(r"^ {4}(\S+)(?: {2,}(\S.*))?$", line)
        if found and not found.group(1).startswith("-"):
            explanation = found.group(2) or (lines[i + 1].strip() if i + 1 < len(lines) else "")
            listed[found.group(1)] = explanation
    return listed


def test_help_lists_and_explains_every_subcommand() -> None:
    result = subprocess.run([str(BOOKING), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = _listed_commands(result.stdout)
    for name in SUBCOMMANDS:
        assert listed.get(name), f"`booking --help` does not list and explain {name!r}:\n{result.stdout}"
    # Every process the Procfile starts through `booking` is one of them.
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8")
    for command in re.findall(r"^\w+:\s*booking\s+([\w-]+)", procfile, flags=re.MULTILINE):
        assert command in listed, f"Procfile runs `booking {command}`, which --help does not list"


def test_each_subcommand_has_its_own_help() -> None:
    for name in SUBCOMMANDS:
        result = subprocess.run([str(BOOKING), name, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (name, result.stderr)
        assert f"usage: booking {name}" in result.stdout, name
