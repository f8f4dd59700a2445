"""The `booking` console script as installed (the real entry point, in a subprocess)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.local.embedded import EmbeddedPostgres
from tests.e2e.test_embedded import postgres_processes, running
from tests.processes import BOOKING, ROOT, free_ports

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


# --- the database commands outside `make run` ------------------------------------------------------


def newcomer_env(**extra: str) -> dict[str, str]:
    """A shell on a fresh machine: no DATABASE_URL, REDIS_URL or TEST_* configured."""
    drop = {"DATABASE_URL", "REDIS_URL", "ADMIN_PASSWORD", "APP_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TEST_")}
    env.update(NODE_ENV="development", **extra)
    return env


def booking(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BOOKING), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A checkout root as the CLI finds it (the nearest directory with a Procfile), outside pytest's
    base temp: as root, pgserver runs postgres as another user, and every new pytest session on the
    machine resets /tmp/pytest-of-<user> to 0700, which locks that user out of a server mid-test."""
    with tempfile.TemporaryDirectory(prefix="booking-checkout-") as name:
        root = Path(name)
        (root / "Procfile").write_text((ROOT / "Procfile").read_text(encoding="utf-8"))
        yield root


@pytest.mark.embedded
def test_database_commands_with_nothing_configured_use_the_checkouts_embedded_database(
    checkout: Path,
) -> None:
    root = checkout
    env = newcomer_env(ADMIN_PASSWORD="password123")
    postgres_dir = root / ".data" / "postgres"

    # Before any migration: one line naming the embedded database and the command that fixes it.
    first = booking("create-admin", "--email", "admin@example.com", cwd=root, env=env)
    assert first.returncode != 0
    assert "Traceback" not in first.stderr
    lines = first.stderr.splitlines()
    assert len(lines) == 1, first.stderr
    assert f"host={postgres_dir}" in lines[0] and "no tables yet" in lines[0], lines[0]
    assert f"`{BOOKING} migrate`" in lines[0], lines[0]
    assert postgres_processes(postgres_dir) == [], "it stops the server it started"

    migrated = booking("migrate", cwd=root, env=env)
    assert migrated.returncode == 0, migrated.stderr
    # From a subdirectory of the checkout too: the same .data/ (the nearest Procfile's directory).
    (root / "docs").mkdir()
    created = booking("create-admin", "--email", "admin@example.com", cwd=root / "docs", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("admin ready: admin@example.com ("), created.stdout
    assert not (root / "docs" / ".data").exists()

    key = booking("create-api-key", "scraper", cwd=root, env=env)
    assert key.returncode == 0, key.stderr
    listed = booking("list-api-keys", cwd=root, env=env)
    assert listed.returncode == 0, listed.stderr
    assert key.stdout.split("_")[1] in listed.stdout
    assert postgres_processes(postgres_dir) == []


@pytest.mark.embedded
def test_a_database_command_leaves_an_embedded_server_it_found_running(checkout: Path) -> None:
    """A server left by a killed run (or started by someone else) is used as found, not stopped."""
    root = checkout
    with EmbeddedPostgres.start(root / ".data" / "postgres") as postgres:
        migrated = booking("migrate", cwd=root, env=newcomer_env())
        assert migrated.returncode == 0, migrated.stderr
        assert running(postgres.pid)
        postgres.create_database("probe")  # and it still answers


@pytest.mark.parametrize(
    "args",
    [("create-admin", "--email", "a@example.com"), ("create-api-key", "x"), ("list-api-keys",), ("migrate",)],
)
def test_an_unreachable_database_is_one_line_naming_it_with_the_password_masked(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    (port,) = free_ports(1)
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{port}/booking"
    result = booking(*args, cwd=tmp_path, env=newcomer_env(DATABASE_URL=url, ADMIN_PASSWORD="password123"))
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"postgresql://app:***@127.0.0.1:{port}/booking" in lines[0], lines[0]
    assert "s3cret-pw" not in lines[0]
    assert "cannot connect" in lines[0], lines[0]
    assert not (tmp_path / ".data").exists(), "a configured DATABASE_URL never touches the embedded one"


# --- serve's port ----------------------------------------------------------------------------------


@pytest.mark.parametrize("other_reuses_port", [False, True])
def test_serve_refuses_a_port_another_process_listens_on(tmp_path: Path, other_reuses_port: bool) -> None:
    """Even when the other listener set SO_REUSEPORT (another stack's web process): no silent sharing."""
    with socket.socket() as other:
        if other_reuses_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        try:
            result = booking(
                "serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, env=newcomer_env()
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"booking serve kept running on taken port {port}") from None
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines[0]


def test_an_embedded_database_that_cannot_start_is_one_line(checkout: Path) -> None:
    spaced = checkout / "my checkout"  # pgserver cannot use a path with whitespace
    spaced.mkdir()
    (spaced / "Procfile").write_text((ROOT / "Procfile").read_text(encoding="utf-8"))
    result = booking("list-api-keys", cwd=spaced, env=newcomer_env())
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{spaced / '.data' / 'postgres'}" in lines[0], lines[0]
