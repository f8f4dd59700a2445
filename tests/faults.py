"""Fault-injection helpers: private PostgreSQL and Redis servers a test may stop, hang and restart.

The machine's PostgreSQL and Redis serve other runs and are never stopped. Each fault test owns its
servers: a PostgreSQL cluster made with `initdb` in a temporary directory (run as the `postgres` user
when the tests run as root, since PostgreSQL refuses root) and a `redis-server` on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import psutil

from tests.support import off_the_loop, unique_email

PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, *, up: bool, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if (sock.connect_ex(("127.0.0.1", port)) == 0) == up:
                return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not {'open' if up else 'close'} port {port} within {timeout}s")


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries installed from the distribution, if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free TCP port, trust auth for `postgres`.

    `stop()` is a fast shutdown (what an operator's restart or a crash-recovery restart looks like to
    clients: connections terminated, port closed); `hang()` freezes every server process (SIGSTOP) so
    connects and queries stall without an error; `resume()` undoes it. `start()` and `stop()` wait for
    pg_ctl and the port, so async code calls them through `asyncio.to_thread`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(
                f"{tool} failed ({result.returncode}): {result.stderr.decode(errors='replace')}\n"
                f"{self.log.read_text(errors='replace') if self.log.exists() else ''}"
            )

    def start(self) -> None:
        off_the_loop("PrivatePostgres.start")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.log), "-o", options
        )
        _wait_port(self.port, up=True, timeout=10, what="PostgreSQL")

    def stop(self) -> None:
        off_the_loop("PrivatePostgres.stop")
        self._run("pg_ctl", "stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.data))
        _wait_port(self.port, up=False, timeout=10, what="PostgreSQL")

    def _processes(self) -> list[psutil.Process]:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def hang(self) -> None:
        for process in self._processes():
            process.suspend()

    def resume(self) -> None:
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()

    def destroy(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.resume()
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-t", "10", "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        import pytest

        pytest.skip("needs PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    server = PrivatePostgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


# --- talking to real web processes ---------------------------------------------------------------------


class Answer(NamedTuple):
    status: int
    body: Any
    content_type: str
    seconds: float


async def call(
    http: aiohttp.ClientSession, method: str, url: str, *, token: str | None = None, **kwargs: Any
) -> Answer:
    """One request, timed from send to the end of the body; JSON bodies decoded."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        raw = await resp.read()
        elapsed = time.perf_counter() - started
        body: Any = json.loads(raw) if raw and "json" in resp.content_type else raw.decode(errors="replace")
        return Answer(resp.status, body, resp.content_type, elapsed)


async def register(http: aiohttp.ClientSession, base_url: str, email: str | None = None) -> dict[str, Any]:
    body = {"email": email or unique_email("fault"), "password": PASSWORD, "name": "Fault"}
    answer = await call(http, "POST", f"{base_url}/api/auth/register", json=body)
    assert answer.status == 201, answer
    session: dict[str, Any] = answer.body
    return session
