"""`booking up` (what `make run` calls) with the repository's Procfile on a machine with no PostgreSQL
or Redis configured: every process comes up on embedded servers, the README's calls work, and Ctrl-C
leaves no process behind. And WEB_CONCURRENCY=2: two real `booking serve` processes share PORT."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from server.local.supervisor import parse_procfile
from tests.e2e.test_embedded import postgres_processes, running
from tests.processes import BOOKING, free_ports
from tests.support import all_exited, unique_email, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.embedded
async def test_booking_up_runs_the_whole_procfile_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    port, job_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(PORT=str(port), JOB_PORT=str(job_port), DB_POOL_SIZE="3", NODE_ENV="development")
    log = (tmp_path / "up.log").open("w")
    up = await asyncio.create_subprocess_exec(
        str(BOOKING), "up", "--procfile", str(tmp_path / "Procfile"),
        cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                seen.update(c.pid for c in psutil.Process(up.pid).children(recursive=True))
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, within=90, interval=0.25, what="/health through booking up")
            email = unique_email("up")
            body = {"email": email, "password": "password123", "name": "Up"}
            async with http.post(f"{base}/api/auth/register", json=body) as resp:
                assert resp.status == 201
            async with http.post(
                f"{base}/api/auth/login", json={"email": email, "password": "password123"}
            ) as resp:
                token = (await resp.json())["accessToken"]
            async with http.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert (await resp.json())["email"] == email

            async def jobs_answers() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{job_port}/jobs/health") as resp:
                        return resp.status == 401  # up, and refusing anonymous callers
                except aiohttp.ClientError:
                    return False

            await wait_for(jobs_answers, within=30, what="the job service")
        output = (tmp_path / "up.log").read_text()
        for name in ("web.1", "jobs.1", "worker.1", "scheduler.1"):
            assert f"{name} " in output, f"{name} never logged:\n{output}"
        seen.update(c.pid for c in psutil.Process(up.pid).children(recursive=True))

        up.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(up.wait(), 30)
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        log.close()

    assert code == 0, (tmp_path / "up.log").read_text()
    await all_exited(seen, within=10, what="every process `booking up` started to exit")
    assert await asyncio.to_thread(postgres_processes, tmp_path / ".data" / "postgres") == []


def serve_processes(root: psutil.Process) -> set[int]:
    """Descendants of `root` that are `booking serve` itself (not the `sh -c` around it)."""
    found = set()
    for proc in root.children(recursive=True):
        try:
            args = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "serve" in args and any(Path(a).name == "booking" for a in args[:2]):
            found.add(proc.pid)
    return found


def tcp_sockets(pid: int, port: int) -> list[Any]:
    """`pid`'s TCP sockets bound to local `port` (listening and accepted ones)."""
    try:
        return [c for c in psutil.Process(pid).net_connections("tcp") if c.laddr and c.laddr.port == port]
    except psutil.NoSuchProcess:
        return []


def test_web_concurrency_2_runs_two_real_serve_processes_on_one_port(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """`WEB_CONCURRENCY=2 booking up`: two `booking serve` processes, each with its own listening socket
    on PORT (SO_REUSEPORT), and each answering some of the connections the kernel spreads over them."""
    procfile = parse_procfile((ROOT / "Procfile").read_text(encoding="utf-8"))
    (tmp_path / "Procfile").write_text(f"release: {procfile['release']}\nweb: {procfile['web']}\n")
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"wc{uuid.uuid4().hex[:10]}:",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "DB_POOL_SIZE": "2",
        "NODE_ENV": "test",
    }
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [str(BOOKING), "up", "--procfile", str(tmp_path / "Procfile")],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    connections: list[http.client.HTTPConnection] = []
    try:
        root = psutil.Process(up.pid)

        def check(condition: Any, what: str, timeout: float) -> Any:
            deadline = time.monotonic() + timeout
            while not (value := condition()):
                assert up.poll() is None, f"booking up exited with {up.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
                time.sleep(0.1)
            return value

        def two_listening() -> set[int]:
            listening = {
                pid
                for pid in serve_processes(root)
                if any(c.status == "LISTEN" for c in tcp_sockets(pid, port))
            }
            return listening if len(listening) == 2 else set()

        webs = check(two_listening, f"two booking serve processes listening on {port}", 60)
        assert "web.1 " in log.read_text() and "web.2 " in log.read_text()

        # New connections until each process has accepted one of ours and answered on it.
        answered_by: set[int] = set()

        def both_answered() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connections.append(conn)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
            assert conn.sock is not None
            ours = conn.sock.getsockname()[1]
            for pid in webs:
                if any(c.raddr and c.raddr.port == ours for c in tcp_sockets(pid, port)):
                    answered_by.add(pid)
            assert len(connections) <= 200, f"200 connections, all answered by {answered_by}"
            return answered_by == webs

        check(both_answered, "both web processes to answer", 30)
    finally:
        for conn in connections:
            conn.close()
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        try:
            code = up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
            raise
    assert code == 0, log.read_text()
    assert not [pid for pid in webs if running(pid)], "a web process outlived booking up"


# --- one `booking up` per checkout -------------------------------------------------------------------


def newcomer_env(**extra: str) -> dict[str, str]:
    """A shell on a fresh machine: no DATABASE_URL, REDIS_URL or TEST_* configured."""
    drop = {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "WEB_REUSE_PORT", "APP_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TEST_")}
    env.update(NODE_ENV="development", **extra)
    return env


class Stack:
    """A real `booking up` (release + web, embedded PostgreSQL and Redis) in its own checkout root."""

    def __init__(self, root: Path, port: int, env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.port = port
        self.env = env
        self.process = process

    @property
    def log(self) -> str:
        return (self.root / "up.log").read_text(errors="replace")

    def health(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 90
        while self.health() != 200:
            assert self.process.poll() is None, (
                f"booking up exited with {self.process.returncode}:\n{self.log}"
            )
            assert time.monotonic() < deadline, f"/health never answered 200:\n{self.log}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Outside pytest's base temp, which a new pytest session resets to 0700, locking out the user
    # pgserver runs postgres as when we are root (tests/deploy/test_cli.py's checkout fixture).
    with tempfile.TemporaryDirectory(prefix="booking-checkout-") as name:
        yield from _stack(Path(name))


def _stack(root: Path) -> Iterator[Stack]:
    procfile = parse_procfile((ROOT / "Procfile").read_text(encoding="utf-8"))
    (root / "Procfile").write_text(f"release: {procfile['release']}\nweb: {procfile['web']}\n")
    (port,) = free_ports(1)
    env = newcomer_env(PORT=str(port), DB_POOL_SIZE="3")
    with (root / "up.log").open("wb") as out:
        process = subprocess.Popen(
            [str(BOOKING), "up", "--procfile", str(root / "Procfile")],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running_stack = Stack(root, port, env, process)
    try:
        running_stack.wait_healthy()
        yield running_stack
        # Whatever the tests did, the first run still stops cleanly and takes its servers with it.
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        assert code == 0, running_stack.log
        assert postgres_processes(root / ".data" / "postgres") == []
        assert "Traceback" not in running_stack.log, running_stack.log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.embedded
def test_a_second_booking_up_in_the_checkout_refuses_at_once_and_leaves_the_first_alone(stack: Stack) -> None:
    postgres_before = postgres_processes(stack.root / ".data" / "postgres")
    redis_before = (stack.root / ".data" / "redis" / "redis.pid").read_text()
    assert postgres_before

    try:
        second = subprocess.run(
            [str(BOOKING), "up", "--procfile", str(stack.root / "Procfile")],
            cwd=stack.root,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the second booking up kept running:\n{exc.output}") from None

    assert second.returncode != 0
    lines = (second.stdout + second.stderr).splitlines()
    assert lines == [
        f"booking up is already running in this checkout, pid {stack.process.pid}; stop it with Ctrl-C there"
    ]
    assert stack.health() == 200
    assert stack.process.poll() is None
    assert postgres_processes(stack.root / ".data" / "postgres")[0] == postgres_before[0]
    assert (stack.root / ".data" / "redis" / "redis.pid").read_text() == redis_before
    assert "stale" not in stack.log


@pytest.mark.embedded
def test_cli_with_nothing_configured_uses_the_running_booking_ups_database(stack: Stack) -> None:
    """`booking create-admin` beside `make run`: its embedded server, which it must not stop."""
    email = unique_email("cli-admin")
    env = {**newcomer_env(), "ADMIN_PASSWORD": "password123"}
    created = subprocess.run(
        [str(BOOKING), "create-admin", "--email", email],
        cwd=stack.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"admin ready: {email} ("), created.stdout

    key = subprocess.run(
        [str(BOOKING), "create-api-key", "scraper"],
        cwd=stack.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert key.returncode == 0, key.stderr
    assert re.fullmatch(r"bk_[0-9a-f]{12}_\S+\n", key.stdout), key.stdout

    # The admin exists in the database the running web process uses, and that process is undisturbed.
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        _login_as_admin_and_list_users(conn, email)
    finally:
        conn.close()
    assert stack.health() == 200
    assert postgres_processes(stack.root / ".data" / "postgres")


def _login_as_admin_and_list_users(conn: http.client.HTTPConnection, email: str) -> None:
    conn.request(
        "POST", "/api/auth/login", body=json.dumps({"email": email, "password": "password123"}),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    login = conn.getresponse()
    assert login.status == 200, login.read()
    token = json.loads(login.read())["accessToken"]
    conn.request("GET", "/api/users", headers={"Authorization": f"Bearer {token}"})
    users = conn.getresponse()
    assert users.status == 200, users.read()  # admin only
    users.read()
