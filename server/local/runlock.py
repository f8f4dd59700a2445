"""One owner per checkout: an OS lock on `.data/run.lock`, held by `booking up` for its whole life.

`booking up` starts (or adopts) the embedded servers under `.data/` and stops them on exit, so a second
one in the same checkout would take the first one's servers from under it. The lock is `flock(2)` on
an open file: the kernel drops it when the holder exits, however it exits (SIGKILL and crashes
included), so a dead run never leaves a stale lock behind. The file itself only says who holds the
lock (pid and command) and, once the embedded PostgreSQL is up, its URL: a CLI command run meanwhile
uses that server instead of starting or stopping one (see server/local/localdb.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

LOCK_NAME = "run.lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """What the lock file says about whoever holds the lock (all None when it could not be read)."""

    pid: int | None
    command: str | None
    database_url: str | None


class CheckoutBusy(Exception):
    """Another process holds the checkout's lock."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {holder.command or 'another process'} (pid {holder.pid})")

    def refusal(self) -> str:
        """The one line for someone who wanted to start a run here."""
        holder = self.holder
        if holder.command == "booking up":
            pid = f", pid {holder.pid}" if holder.pid is not None else ""
            return f"booking up is already running in this checkout{pid}; stop it with Ctrl-C there"
        if holder.command is not None:
            pid = f" (pid {holder.pid})" if holder.pid is not None else ""
            return (
                f"`{holder.command}`{pid} is using this checkout's embedded database; "
                "run this again when it has finished"
            )
        return f"another booking process holds {self.path}; run this again when it has finished"


class RunLock:
    """The held lock; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int, command: str) -> None:
        self.path = path
        self.command = command
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, command: str) -> RunLock:
        """Take the lock at once or raise CheckoutBusy; never waits."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_NAME
        # O_CLOEXEC: no child (web, worker, postgres, redis) inherits the descriptor, so none of them
        # can keep the lock alive after we are gone.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckoutBusy(path, read_holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(path, fd, command)
        lock.publish()
        return lock

    def publish(self, *, database_url: str | None = None) -> None:
        """Write who holds the lock (and the embedded database's URL, once there is one)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is no longer held")
        record = {"pid": os.getpid(), "command": self.command, "database_url": database_url}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self) -> None:
        """Give the lock up; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody may read our pid as a live holder's any more
        os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def read_holder(path: Path) -> Holder:
    """The lock file's record; fields it lacks (or a file being rewritten) read as None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Holder(pid=None, command=None, database_url=None)
    if not isinstance(record, dict):
        return Holder(pid=None, command=None, database_url=None)
    pid, command, url = record.get("pid"), record.get("command"), record.get("database_url")
    return Holder(
        pid=pid if isinstance(pid, int) else None,
        command=command if isinstance(command, str) else None,
        database_url=url if isinstance(url, str) else None,
    )


def checkout_root(start: Path | None = None) -> Path:
    """The checkout whose `.data/` `booking up` and the CLI use: the nearest of the current directory
    and its parents that holds a Procfile (so `make run`'s directory, from anywhere inside it), else
    the current directory itself."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "Procfile").is_file():
            return directory
    return here
