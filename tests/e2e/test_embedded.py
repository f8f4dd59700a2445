"""Embedded PostgreSQL and Redis, and `booking up` on top of them (real servers, no mocks).

Starting and stopping an embedded server blocks (it waits for the server), so the server tests are plain
functions that run their few queries with `asyncio.run`; the `booking up` tests, which read a child's
output as it comes, are async and keep every blocking look (files, `ps`) off the loop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
import pytest
from redis import Redis

from server.local.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError, embedded_services
from server.local.up import mask_url
from tests.support import all_exited

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 20.0


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process that is not a zombie."""
    result = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True, check=True
    )
    rows = []
    for line in result.stdout.splitlines():
        pid, ppid, stat, args = [*line.split(None, 3), ""][:4]
        if not stat.startswith("Z"):
            rows.append((int(pid), int(ppid), args))
    return rows


def postgres_processes(data_dir: Path) -> list[int]:
    """The postmaster serving `data_dir` and its backends."""
    rows = processes()
    postmasters = {pid for pid, _, args in rows if "postgres" in args and str(data_dir) in args}
    return sorted(postmasters | {pid for pid, ppid, _ in rows if ppid in postmasters})


def running(pid: int) -> bool:
    return any(row[0] == pid for row in processes())


def fetchval(url: str, query: str) -> Any:
    """One query on a connection of its own (asyncpg is async only; these tests are not)."""

    async def run() -> Any:
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    return asyncio.run(run())


def start_and_abandon(server_class: str, data_dir: Path) -> None:
    """Start a server from a fresh interpreter that exits with no clean-up, like a killed run."""
    code = (
        "import os, sys\nfrom pathlib import Path\nimport server.local.embedded\n"
        f"server.local.embedded.{server_class}.start(Path(sys.argv[1]))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=ROOT, check=True, timeout=60)


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.embedded
def test_postgres_serves_queries_creates_databases_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    postgres = EmbeddedPostgres.start(data_dir)
    try:
        assert fetchval(postgres.url, "SELECT 40 + 2") == 42

        url = postgres.create_database("booking_test")
        assert postgres.create_database("booking_test") == url  # a second call is a no-op
        assert fetchval(url, "SELECT current_database()") == "booking_test"
        with pytest.raises(ValueError, match="database name"):
            postgres.create_database("x; DROP DATABASE postgres")
        assert postgres.pid in postgres_processes(data_dir)
    finally:
        postgres.stop()

    assert postgres_processes(data_dir) == []
    assert not (data_dir / "postmaster.pid").exists()
    postgres.stop()  # stopping twice is harmless


@pytest.mark.embedded
def test_postgres_left_running_by_a_killed_run_is_adopted_and_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    start_and_abandon("EmbeddedPostgres", data_dir)
    orphans = postgres_processes(data_dir)
    assert orphans, "the killed run should have left its server running"

    with EmbeddedPostgres.start(data_dir) as postgres:
        assert postgres.pid in orphans

    assert postgres_processes(data_dir) == []


@pytest.mark.embedded
def test_postgres_in_a_path_too_long_for_a_unix_socket_uses_a_short_socket_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / ("deep" * 25) / "pg"  # the socket path would pass sun_path's 108 bytes
    assert len(str(data_dir / ".s.PGSQL.5432")) > 108

    with EmbeddedPostgres.start(data_dir) as postgres:
        assert str(data_dir) not in postgres.url
        socket_dir = Path(unquote(postgres.url.partition("?host=")[2]))
        assert socket_dir.is_dir()
        assert fetchval(postgres.url, "SELECT 1") == 1

    assert postgres_processes(data_dir) == []
    assert not socket_dir.exists()


def test_postgres_refuses_a_data_dir_with_whitespace(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match="whitespace"):
        EmbeddedPostgres.start(tmp_path / "my data")


# --- Redis ----------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_redis_answers_and_stops(tmp_path: Path) -> None:
    server = EmbeddedRedis.start(tmp_path / "redis")
    try:
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", server.url)
        with Redis.from_url(server.url) as client:
            assert client.ping()
            client.set("greeting", "hello")
            assert client.get("greeting") == b"hello"
    finally:
        server.stop()

    assert not running(server.pid)
    assert not (tmp_path / "redis" / "redis.pid").exists()
    server.stop()  # stopping twice is harmless


@pytest.mark.embedded
def test_redis_on_a_taken_port_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(EmbeddedServerError, match=f"exited with code 1 on port {port}"):
            EmbeddedRedis.start(tmp_path / "redis", port)

    # redis-server retitles itself "redis-server 127.0.0.1:<port>" once it runs.
    assert not [args for _, _, args in processes() if "redis-server" in args and f":{port}" in args]


@pytest.mark.embedded
def test_redis_left_running_by_a_killed_run_is_stopped_on_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    start_and_abandon("EmbeddedRedis", data_dir)
    stale = int((data_dir / "redis.pid").read_text())
    assert running(stale), "the killed run should have left its server running"

    with EmbeddedRedis.start(data_dir) as server:
        assert server.pid != stale
        assert not running(stale)


@pytest.mark.embedded
def test_embedded_services_yield_working_urls_and_stop_both(tmp_path: Path) -> None:
    with embedded_services(tmp_path, database="booking_services") as (database_url, redis_url):
        assert fetchval(database_url, "SELECT current_database()") == "booking_services"
        with Redis.from_url(redis_url) as client:
            assert client.ping()
            info = client.info("server")

    assert postgres_processes(tmp_path / "postgres") == []
    assert not running(int(info["process_id"]))


# --- booking up -----------------------------------------------------------------------------------


def test_mask_url_hides_only_the_password() -> None:
    assert (
        mask_url("postgresql://app:s3cret@db.internal:5432/booking")
        == "postgresql://app:***@db.internal:5432/booking"
    )
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert (
        mask_url("postgresql://postgres@/booking?host=/tmp/x") == "postgresql://postgres@/booking?host=/tmp/x"
    )
    assert mask_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


class UpProcess:
    """`server.local.up.up` in a child Python with no DATABASE_URL, REDIS_URL, PORT or JOB_PORT set."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, root: Path, procfile: str) -> UpProcess:
        await asyncio.to_thread((root / "Procfile").write_text, procfile)
        code = (
            "import sys\nfrom pathlib import Path\nfrom server.local.up import up\n"
            "root = Path(sys.argv[1])\n"
            "sys.exit(up(root=root, procfile=root / 'Procfile', web_concurrency=2))\n"
        )
        env = {
            k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "PORT", "JOB_PORT"}
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(root),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        return cls(process)

    async def wait_for_lines(self, *patterns: str) -> None:
        """Read output until every pattern has matched a line, in whatever order they come."""
        assert self.process.stdout is not None
        missing = set(patterns)
        async with asyncio.timeout(DEADLINE_SECONDS):
            while missing and (line := (await self.process.stdout.readline()).decode()):
                self.lines.append(line)
                missing = {pattern for pattern in missing if not re.search(pattern, line)}
        assert not missing, f"output lacks {sorted(missing)}:\n{self.output}"

    async def finish(self) -> int:
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                assert self.process.stdout is not None
                self.lines.extend([line.decode() async for line in self.process.stdout])
                return await self.process.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Ctrl-C first so the embedded servers are stopped too; SIGKILL only if that fails."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(DEADLINE_SECONDS):
                    await self.process.communicate()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.embedded
async def test_up_runs_release_then_every_process_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    up = await UpProcess.start(
        tmp_path,
        "release: echo migrating\n"
        "web: echo ready pid=$$ port=$PORT db=$DATABASE_URL; exec sleep 300\n"
        "worker: echo worker pid=$$ redis=$REDIS_URL; exec sleep 300\n",
    )
    try:
        await up.wait_for_lines(r"worker\.1 +\| worker pid=", r"web\.1 +\| ready", r"web\.2 +\| ready")
        redis_pid = int(await asyncio.to_thread((tmp_path / ".data" / "redis" / "redis.pid").read_text))
        assert await asyncio.to_thread(running, redis_pid)
        assert await asyncio.to_thread(postgres_processes, tmp_path / ".data" / "postgres")

        up.process.send_signal(signal.SIGINT)
        code = await up.finish()
    finally:
        await up.stop()

    output = up.output
    assert code == 0, output
    assert "release | migrating" in output
    assert re.search(r"web\.1 +\| ready pid=\d+ port=5000 db=postgresql://postgres@/booking\?host=", output)
    assert re.search(r"worker\.1 +\| worker pid=\d+ redis=redis://127\.0\.0\.1:\d+/0", output)
    assert "Swagger UI  http://localhost:5000/api/" in output
    assert "/jobs/" not in output  # the test Procfile has no jobs process, so no dead URL is printed
    children = [int(pid) for pid in re.findall(r"pid=(\d+)", output)]
    await all_exited(children, within=DEADLINE_SECONDS, what="the Procfile processes to exit")
    await all_exited([redis_pid], within=DEADLINE_SECONDS, what="embedded Redis to exit")
    assert await asyncio.to_thread(postgres_processes, tmp_path / ".data" / "postgres") == []


@pytest.mark.embedded
async def test_up_stops_when_release_fails_and_starts_nothing_else(tmp_path: Path) -> None:
    up = await UpProcess.start(tmp_path, "release: echo broken migration; exit 4\nweb: echo web started\n")
    code = await up.finish()

    output = up.output
    assert code == 4, output
    assert "release failed with exit code 4; nothing else was started" in output
    assert "web started" not in output
    assert await asyncio.to_thread(postgres_processes, tmp_path / ".data" / "postgres") == []
    assert not await asyncio.to_thread((tmp_path / ".data" / "redis" / "redis.pid").exists)
