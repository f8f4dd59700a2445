"""`booking up`: the one-command local run (SPEC §11).

Starts embedded PostgreSQL and Redis for whichever of DATABASE_URL / REDIS_URL is unset, runs the
Procfile's `release` step once, then every other Procfile process until Ctrl-C. It holds the
checkout's run lock (server/local/runlock.py) throughout: a second `booking up` in the same checkout refuses
at once instead of adopting, and later stopping, the first one's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from server.local.embedded import EmbeddedPostgres, EmbeddedRedis, port_is_free
from server.local.runlock import CheckoutBusy, RunLock
from server.local.supervisor import expand, parse_procfile, run, supervise

EMBEDDED_REDIS_PORT = 6390
DATABASE_NAME = "booking"
# The taskiq stream worker was seen taking over 20 s to exit on SIGTERM; its messages are acked, so
# killing it after a bounded grace loses nothing.
GRACE_SECONDS = 10.0
# Set for the Procfile processes when WEB_CONCURRENCY > 1: `booking serve` then binds PORT with
# SO_REUSEPORT so its instances share it; without it a taken port is an error (server/cli.py).
REUSE_PORT_VARIABLE = "WEB_REUSE_PORT"


def up(*, root: Path, procfile: Path, web_concurrency: int) -> int:
    """Run the whole service locally; return the exit code for the shell."""
    entries = parse_procfile(procfile.read_text(encoding="utf-8"))
    release = entries.pop("release", None)
    if not entries:
        _say(f"{procfile} lists no process besides 'release'")
        return 1
    processes = expand(entries, {"web": web_concurrency} if "web" in entries else {})
    try:
        lock = RunLock.acquire(root / ".data", "booking up")
    except CheckoutBusy as busy:
        sys.stderr.write(f"{busy.refusal()}\n")
        return 1
    with lock:
        return _up(root, lock, release, processes, web_concurrency)


def _up(
    root: Path, lock: RunLock, release: str | None, processes: list[tuple[str, str]], web_concurrency: int
) -> int:
    env = dict(os.environ)
    env.setdefault("PORT", "5000")
    env.setdefault("JOB_PORT", "5001")
    # Child Pythons would otherwise buffer their output when it goes to a pipe (ours).
    env.setdefault("PYTHONUNBUFFERED", "1")
    # `make run` calls .venv/bin/booking without activating the venv; the Procfile says `booking`.
    scripts = sysconfig.get_path("scripts")
    if scripts not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [scripts, env.get("PATH")]))
    if web_concurrency > 1:
        env[REUSE_PORT_VARIABLE] = "1"
    else:
        env.pop(REUSE_PORT_VARIABLE, None)
    try:
        with _stop_signals_interrupt(), contextlib.ExitStack() as servers:
            if embedded_url := _provide_database(env, root, servers):
                # A CLI command run meanwhile (`booking create-admin`) uses this server (local/localdb.py).
                lock.publish(database_url=embedded_url)
            _provide_redis(env, root, servers)
            if release is not None:
                _say(f"release: {release}")
                outcome = asyncio.run(supervise([("release", release)], env, grace_seconds=GRACE_SECONDS))
                if outcome.signal is not None:
                    return 128 + outcome.signal
                if outcome.exit_code != 0:
                    _say(f"release failed with exit code {outcome.exit_code}; nothing else was started")
                    return outcome.exit_code
            _say_urls(env, {name.split(".")[0] for name, _ in processes})
            return run(processes, env, grace_seconds=GRACE_SECONDS)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, for printing."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "(unparsable URL)"


def _provide_database(env: dict[str, str], root: Path, servers: contextlib.ExitStack) -> str | None:
    """Set DATABASE_URL; return it when it is the embedded server's."""
    if env.get("DATABASE_URL"):
        _say(f"PostgreSQL: {mask_url(env['DATABASE_URL'])} (from DATABASE_URL)")
        return None
    postgres = servers.enter_context(EmbeddedPostgres.start(root / ".data" / "postgres"))
    env["DATABASE_URL"] = postgres.create_database(DATABASE_NAME)
    _say(f"PostgreSQL: {env['DATABASE_URL']} (embedded, data in {postgres.data_dir})")
    return env["DATABASE_URL"]


def _provide_redis(env: dict[str, str], root: Path, servers: contextlib.ExitStack) -> None:
    if env.get("REDIS_URL"):
        _say(f"Redis: {mask_url(env['REDIS_URL'])} (from REDIS_URL)")
        return
    port = EMBEDDED_REDIS_PORT if port_is_free(EMBEDDED_REDIS_PORT) else None
    redis = servers.enter_context(EmbeddedRedis.start(root / ".data" / "redis", port))
    env["REDIS_URL"] = redis.url
    _say(f"Redis: {redis.url} (embedded)")


def _say_urls(env: dict[str, str], processes: Iterable[str]) -> None:
    web = f"localhost:{env['PORT']}"
    lines = [
        "",
        f"  Swagger UI  http://{web}/api/",
        f"  API         http://{web}/api/booking  (needs a token: log in first, see README.md)",
        f"  WebSocket   ws://{web}/ws/",
        f"  Health      http://{web}/health",
    ]
    if "jobs" in processes:
        lines.append(f"  Jobs        http://localhost:{env['JOB_PORT']}/jobs/health  (admin or API key)")
    _say("\n".join([*lines, "", "Ctrl-C stops everything."]))


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Outside the supervisor, make SIGTERM and SIGHUP unwind like Ctrl-C, so the embedded servers
    are stopped instead of orphaned when `booking up` is told to stop during start-up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()
