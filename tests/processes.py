"""Start, health-check and stop real `booking serve` processes for end-to-end tests.

Each process logs to its own file (a pipe nobody reads would fill and block the server); `output(proc)`
returns that log so a failing test can show why a process misbehaved. The helpers block (they wait for
processes and poll with `time.sleep`), so async code calls them through `asyncio.to_thread`; called on a
thread that runs an event loop they fail at once (`tests.support.off_the_loop`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, NamedTuple

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from tests.support import off_the_loop

ROOT = Path(__file__).resolve().parent.parent
# The console script of the environment running this code: `make bench VENV=…` and `make test VENV=…`
# run `$(VENV)/bin/python` (directly, or through the `pytest` script's shebang), so this is
# `$(VENV)/bin/booking` whatever VENV is, not the checkout's .venv.
BOOKING = Path(sys.executable).parent / "booking"

_logs: dict[int, IO[bytes]] = {}


class WebProcess(NamedTuple):
    base_url: str
    process: subprocess.Popen[bytes]


class Exit(NamedTuple):
    base_url: str
    code: int
    output: str


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago (all held open together so none repeats)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def output(process: subprocess.Popen[bytes], limit: int = 4000) -> str:
    """The tail of a process's combined stdout/stderr."""
    log = _logs.get(process.pid)
    if log is None:
        return ""
    log.flush()
    return Path(log.name).read_bytes()[-limit:].decode(errors="replace")


def wait_healthy(url: str, deadline: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `GET <url>/health` until 200; fail by `deadline` (a `time.monotonic()` value) or if it dies."""
    off_the_loop("wait_healthy")
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{url} exited with {process.returncode}:\n{output(process)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:  # noqa: S310 (our own URL)
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    detail = output(process) if process is not None else ""
    raise AssertionError(f"{url}/health not 200 before the deadline (last: {last})\n{detail}")


def start_web(
    n: int, env: Mapping[str, str], *, host: str = "127.0.0.1", timeout: float = 30.0
) -> list[WebProcess]:
    """Start `n` web processes (`booking serve`) with `env` over this one's, and wait until all are healthy.

    On any failure the processes already started are stopped before the error propagates.
    """
    off_the_loop("start_web")
    full_env = {**os.environ, "LOG_LEVEL": "WARNING", **env}
    started: list[WebProcess] = []
    try:
        for port in free_ports(n):
            log = tempfile.NamedTemporaryFile(prefix=f"web-{port}-", suffix=".log", delete=False)  # noqa: SIM115
            process = subprocess.Popen(
                [str(BOOKING), "serve", "--host", host, "--port", str(port)],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _logs[process.pid] = log
            started.append(WebProcess(f"http://{host}:{port}", process))
        deadline = time.monotonic() + timeout
        for web in started:
            wait_healthy(web.base_url, deadline, web.process)
    except BaseException:
        stop(started)
        raise
    return started


def stop(procs: list[WebProcess], *, timeout: float = 15.0) -> list[Exit]:
    """SIGTERM every process, SIGKILL whatever is left after `timeout`; how each one exited.

    Raises if a process is still alive afterwards, so a leaked server fails the test instead of lingering.
    """
    off_the_loop("stop")
    for web in procs:
        if web.process.poll() is None:
            web.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for web in procs:
        try:
            web.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            web.process.kill()
            web.process.wait(timeout=5)
    exits: list[Exit] = []
    for web in procs:
        code = web.process.poll()
        assert code is not None, f"{web.base_url} (pid {web.process.pid}) is still running"
        exits.append(Exit(web.base_url, code, output(web.process)))
        log = _logs.pop(web.process.pid, None)
        if log is not None:
            log.close()
            Path(log.name).unlink(missing_ok=True)
    return exits


def web_env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """A `booking serve` environment with limits out of the way (tests that want a limit set it)."""
    return {
        "NODE_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "AUTH_RATE_LIMIT_PER_IP": "100000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "100000",
        "API_RATE_LIMIT_PER_USER": "100000",
        **extra,
    }


def listeners(redis_url: str, channel: str) -> int:
    """How many processes' event-bus listeners are subscribed to `channel` (0 when Redis is down)."""
    off_the_loop("listeners")
    client = SyncRedis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
    except RedisError:
        return 0
    finally:
        client.close()


def wait_for_listeners(redis_url: str, channel: str, count: int, timeout: float = 15.0) -> None:
    """`count` processes' bus listeners subscribed, so no event published from now on can be missed."""
    off_the_loop("wait_for_listeners")
    deadline = time.monotonic() + timeout
    while (subscribed := listeners(redis_url, channel)) < count:
        assert time.monotonic() < deadline, f"only {subscribed} of {count} listeners on {channel}"
        time.sleep(0.05)


@contextlib.contextmanager
def running_webs(n: int, database_url: str, redis_url: str, **extra: str) -> Iterator[list[WebProcess]]:
    """`n` real `booking serve` processes on a key prefix of their own (web_env plus `extra`), every
    listener subscribed before the caller starts, so no event it causes is missed; each must exit 0."""
    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    procs = start_web(n, web_env(database_url, redis_url, prefix, **extra))
    try:
        wait_for_listeners(redis_url, f"{prefix}events", n)
        yield procs
    finally:
        exits = stop(procs)
        assert all(e.code == 0 for e in exits), [(e.base_url, e.code, e.output) for e in exits]
