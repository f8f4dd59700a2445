"""The database a CLI command works on (`migrate`, `create-admin`, the API-key commands), and its
failures as one line.

DATABASE_URL when it is set (in the environment or `.env`), or in production. Otherwise this
checkout's embedded PostgreSQL, the one `make run` uses under `.data/postgres` (the checkout is the
nearest directory, from the current one up, that holds a Procfile: server/local/runlock.py):

- while `booking up` runs there, the server it started, used as it is and never stopped;
- else the command starts that server (or adopts one a killed run left behind) under the checkout's
  run lock, and afterwards stops it only if it started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from server.base.settings import Settings, read_dotenv
from server.local.embedded import EmbeddedPostgres, EmbeddedServerError
from server.local.runlock import CheckoutBusy, RunLock, checkout_root
from server.local.up import DATABASE_NAME, mask_url


class DatabaseUnavailable(Exception):
    """No database for the command; the message is the one line to print."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    label: str  # how messages name it: the URL (password masked) and where it came from


def configured_database_url() -> str | None:
    """DATABASE_URL from the environment, else from `.env` (as Settings reads them)."""
    return os.environ.get("DATABASE_URL") or read_dotenv(Path(".env")).get("DATABASE_URL") or None


@contextlib.contextmanager
def cli_database(command: str, settings: Settings) -> Iterator[Target]:
    """Yield the database `booking <command>` uses; raise DatabaseUnavailable when there is none."""
    if configured_database_url() or settings.production:
        yield Target(settings.database_url, f"{mask_url(settings.database_url)} (from DATABASE_URL)")
        return
    data_dir = checkout_root() / ".data"
    try:
        lock = RunLock.acquire(data_dir, f"booking {command}")
    except CheckoutBusy as busy:
        running = _running_stack(busy)
    else:
        with lock:
            yield from _own_embedded(data_dir)
        return
    yield running


def _own_embedded(data_dir: Path) -> Iterator[Target]:
    """With the run lock held: start (or adopt) the embedded server, stop it after only if we started it."""
    postgres_dir = data_dir / "postgres"
    # pgserver logs a failed pg_ctl as a dozen lines on stderr; our one line says it (and where the log is).
    pgserver_log = logging.getLogger("pgserver")
    pgserver_log.addHandler(logging.NullHandler())
    pgserver_log.propagate = False
    try:
        postgres = EmbeddedPostgres.start(postgres_dir)
    except EmbeddedServerError as exc:
        raise DatabaseUnavailable(f"error: {_line(exc)}") from exc
    except Exception as exc:
        raise DatabaseUnavailable(
            f"error: this checkout's embedded PostgreSQL ({postgres_dir}) did not start: {_line(exc)}"
        ) from exc
    try:
        url = postgres.create_database(DATABASE_NAME)
    except Exception as exc:
        _close(postgres)
        raise DatabaseUnavailable(
            f"error: could not create database {DATABASE_NAME!r} in the embedded PostgreSQL "
            f"({postgres_dir}): {_line(exc)}"
        ) from exc
    try:
        yield Target(url, f"{url} (this checkout's embedded PostgreSQL)")
    finally:
        _close(postgres)


def _close(postgres: EmbeddedPostgres) -> None:
    try:
        postgres.close()
    except EmbeddedServerError as exc:
        raise DatabaseUnavailable(f"error: {_line(exc)}") from exc


def _running_stack(busy: CheckoutBusy) -> Target:
    holder = busy.holder
    if holder.command != "booking up":
        raise DatabaseUnavailable(f"error: {busy.refusal()}")
    if holder.database_url is None:
        raise DatabaseUnavailable(
            f"error: booking up (pid {holder.pid}) runs in this checkout but has no embedded PostgreSQL "
            "yet (still starting, or it uses its own DATABASE_URL); try again in a moment, or set "
            "DATABASE_URL to the database it uses"
        )
    label = f"{holder.database_url} (the embedded PostgreSQL of booking up, pid {holder.pid})"
    return Target(holder.database_url, label)


def describe_failure(exc: BaseException, target: Target) -> str:
    """One line: what went wrong, on which database, and what to do about it."""
    causes = list(_causes(exc))
    reason = _line(causes[-1])
    password = _password(target.url)
    if password:
        reason = reason.replace(password, "***")
    for cause in causes:
        if isinstance(cause, asyncpg.UndefinedTableError):
            return (
                f"error: {target.label} has no tables yet ({_line(cause)}); "
                f"run `{program()} migrate` first (make run migrates too)"
            )
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"error: {target.label}: {_line(cause)}; create it, or set DATABASE_URL to one that exists"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
            return f"error: {target.label} refused the login ({_line(cause)}); check DATABASE_URL"
        if isinstance(cause, OSError | TimeoutError):
            return (
                f"error: cannot connect to PostgreSQL at {target.label}: {reason}; is it running? "
                "Fix DATABASE_URL, or unset it to use this checkout's embedded database"
            )
    return f"error: {type(causes[-1]).__name__} on {target.label}: {reason}"


def program() -> str:
    """How to call this CLI again, as it was called (`.venv/bin/booking` when not on PATH)."""
    invoked = sys.argv[0] if sys.argv else ""
    return invoked if os.sep in invoked and Path(invoked).name == "booking" else "booking"


def _causes(exc: BaseException) -> Iterable[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's `.orig`, `raise … from`), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
