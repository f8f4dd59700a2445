"""The `booking` console script: one entry point for every process in the Procfile."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import getpass
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from server.base.settings import Settings, SettingsError
from server.worker import webhook_cli

if TYPE_CHECKING:
    from actors.services.api_keys import ApiKeyService

ROOT = Path(__file__).resolve().parent.parent


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")


def _use_uvloop() -> None:
    """uvloop where it installs (not on Windows): measured ~5-8 % less CPU per booking create than
    asyncio's own loop (docs/BENCHMARKS.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover (Windows)
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run_http(
    args: argparse.Namespace, process: str, make_app: Callable[[Settings], web.Application], default_port: int
) -> int:
    """`serve` and `jobs` run the same way: the port bound first (a taken one is a one-line error),
    no access log from aiohttp (ours omits query strings), a bounded graceful shutdown."""
    from server.web import logs

    settings = _settings()
    logs.configure(level=settings.log_level, json_output=settings.log_json, process=process)
    port = args.port if args.port is not None else default_port
    host = args.host or settings.host
    sock = _listen(process, host, port, reuse_port=args.reuse_port)
    logging.getLogger("server").info(
        "%s process %d listening on %s:%d (%s%s)",
        process,
        os.getpid(),
        host,
        port,
        settings.environment,
        ", SO_REUSEPORT" if args.reuse_port else "",
    )
    _use_uvloop()
    web.run_app(make_app(settings), sock=sock, access_log=None, shutdown_timeout=10.0, print=None)
    return 0


def _listen(process: str, host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A socket bound to host:port. SO_REUSEPORT only when asked (`--reuse-port`, which `booking up`
    gives its web processes when WEB_CONCURRENCY > 1): without it a port someone else listens on,
    another stack's web process included, is refused instead of silently shared."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, OverflowError) as exc:
        sys.exit(f"{process}: cannot listen on {host}:{port}: {exc}")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: TIME_WAIT is fine
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        taken = exc.errno == errno.EADDRINUSE
        variable = {"web": "PORT", "jobs": "JOB_PORT"}.get(process, "the port")
        hint = f"; another process is listening there: stop it, or set {variable} or --port" if taken else ""
        sys.exit(f"{process}: cannot listen on {host}:{port}: {exc.strerror or exc}{hint}")
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import create_app

    return _run_http(args, "web", create_app, _settings().port)


def cmd_jobs(args: argparse.Namespace) -> int:
    from server.jobs import create_jobs_app

    return _run_http(args, "jobs", create_jobs_app, _settings().job_port)


T = TypeVar("T")


def _on_database(command: str, work: Callable[[Settings], T]) -> T:
    """Run `work` with the database `booking <command>` uses: DATABASE_URL, or with nothing configured
    this checkout's embedded one (server/local/localdb.py). A failure is one line naming that database and
    what to do, never a traceback; a refused input (DomainError) exits with its reason."""
    from actors.domain.errors import DomainError
    from server.local.localdb import DatabaseUnavailable, cli_database, describe_failure

    settings = _settings()
    try:
        with cli_database(command, settings) as target:
            try:
                return work(dataclasses.replace(settings, database_url=target.url))
            except DomainError as exc:
                fields = "; ".join(f"{e.field}: {e.message}" for e in getattr(exc, "errors", ()))
                sys.exit(f"error: {exc.detail}" + (f" ({fields})" if fields else ""))
            except Exception as exc:
                sys.exit(describe_failure(exc, target))
    except DatabaseUnavailable as exc:
        sys.exit(str(exc))


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import migrate

    def run(settings: Settings) -> None:
        if args.downgrade:
            migrate.downgrade(settings.database_url, args.downgrade)
        else:
            migrate.upgrade(settings.database_url, args.revision)

    _on_database("migrate", run)
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    from server.app import auth_service
    from storage.db import Database

    _settings()  # a configuration error before any prompt
    email = args.email or input("Admin email: ").strip()
    password = os.environ.get("ADMIN_PASSWORD") or getpass.getpass("Admin password (8-128 chars): ")
    if not 8 <= len(password) <= 128:
        sys.exit("password must be 8-128 characters")

    async def run(settings: Settings) -> None:
        db = await Database.open(settings.database_url, pool_size=1, timeout=settings.db_timeout)
        try:
            user = await auth_service(settings, db).ensure_admin(
                email=email, password=password, name=args.name
            )
        finally:
            await db.close()
        print(f"admin ready: {user.email} ({user.id})")  # noqa: T201

    _on_database("create-admin", lambda settings: asyncio.run(run(settings)))
    return 0


def _with_api_keys(command: str, action: Callable[[ApiKeyService], Awaitable[T]]) -> T:
    """Run one ApiKeyService call on a one-connection pool (see _on_database for the database)."""
    from actors.services.api_keys import ApiKeyService
    from storage.db import Database

    async def run(settings: Settings) -> T:
        db = await Database.open(settings.database_url, pool_size=1, timeout=settings.db_timeout)
        try:
            return await action(ApiKeyService(db))
        finally:
            await db.close()

    return _on_database(command, lambda settings: asyncio.run(run(settings)))


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else "-"


def cmd_create_api_key(args: argparse.Namespace) -> int:
    from server.local.localdb import program

    created = _with_api_keys(
        "create-api-key", lambda keys: keys.create(name=args.name, expires_in_days=args.expires_in_days)
    )
    key = created.key
    expiry = f"expires {_when(key.expires_at)}" if key.expires_at else "never expires"
    # The key alone on stdout (KEY=$(booking create-api-key …)); the rest is for the person reading.
    print(  # noqa: T201
        f"API key {key.prefix} ({key.name}) created; {expiry}. It is shown once, now: store it in a "
        f"secret manager. Revoke it with `{program()} revoke-api-key {key.prefix}`.",
        file=sys.stderr,
    )
    print(created.token)  # noqa: T201
    return 0


def cmd_list_api_keys(args: argparse.Namespace) -> int:
    keys = _with_api_keys("list-api-keys", lambda service: service.list_keys())
    now = datetime.now(UTC)
    rows = [("PREFIX", "NAME", "STATE", "CREATED", "EXPIRES", "LAST USED", "REVOKED")]
    rows += [
        (
            k.prefix,
            k.name,
            k.state_at(now),
            _when(k.created_at),
            _when(k.expires_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())  # noqa: T201
    return 0


def cmd_revoke_api_key(args: argparse.Namespace) -> int:
    key = _with_api_keys("revoke-api-key", lambda keys: keys.revoke(args.prefix))
    print(f"API key {key.prefix} ({key.name}) revoked at {_when(key.revoked_at)}")  # noqa: T201
    return 0


def _days(raw: str) -> int:
    from actors.services.api_keys import MAX_EXPIRY_DAYS

    try:
        days = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {raw!r}") from None
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_EXPIRY_DAYS} days, not {days}")
    return days


def cmd_worker(args: argparse.Namespace) -> int:
    from server.web import logs
    from server.worker.workers import run_worker

    settings = _settings()
    logs.configure(level=settings.log_level, json_output=settings.log_json, process="worker")
    return asyncio.run(run_worker(settings, max_tasks=args.max_tasks, grace=args.grace))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from server.web import logs
    from server.worker.workers import run_scheduler

    settings = _settings()
    logs.configure(level=settings.log_level, json_output=settings.log_json, process="scheduler")
    return asyncio.run(
        run_scheduler(
            settings,
            update_interval=args.update_interval,
            reconcile_interval=args.reconcile_interval,
            lease=args.lease,
            grace=args.grace,
        )
    )


def cmd_up(args: argparse.Namespace) -> int:
    from server.local.runlock import checkout_root
    from server.local.up import up

    return up(root=checkout_root(), procfile=Path(args.procfile), web_concurrency=args.web_concurrency)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="booking", description="Booking service: every process of the Procfile."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="web process: REST /api/, WebSocket /ws/, /health, /metrics, Swagger UI"
    )
    serve.add_argument("--host", default=None, help="bind address (default HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port (default PORT or 5000)")
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        default=os.environ.get("WEB_REUSE_PORT") == "1",
        help="share the port with other web processes (SO_REUSEPORT; default WEB_REUSE_PORT=1, which "
        "booking up sets when WEB_CONCURRENCY > 1); without it a taken port is an error",
    )
    serve.set_defaults(func=cmd_serve)

    jobs = sub.add_parser(
        "jobs", help="job service: /jobs/health, /jobs/metrics, /jobs/queue/stats, /jobs/cleanup (admin)"
    )
    jobs.add_argument("--host", default=None, help="bind address (default HOST or 0.0.0.0)")
    jobs.add_argument("--port", type=int, default=None, help="port (default JOB_PORT or 5001)")
    jobs.add_argument(
        "--reuse-port", action="store_true", help="share the port with other job processes (SO_REUSEPORT)"
    )
    jobs.set_defaults(func=cmd_jobs)

    migrate = sub.add_parser("migrate", help="release step: alembic upgrade head (never run at web start-up)")
    migrate.add_argument("--revision", default="head", help="upgrade to this revision (default head)")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead (e.g. base)")
    migrate.set_defaults(func=cmd_migrate)

    admin = sub.add_parser(
        "create-admin", help="create or promote an admin (password from ADMIN_PASSWORD or prompt)"
    )
    admin.add_argument("--email", help="admin email (prompted when omitted)")
    admin.add_argument("--name", default="Administrator")
    admin.set_defaults(func=cmd_create_admin)

    create_key = sub.add_parser(
        "create-api-key",
        help="create an API key for the job service; prints it once (only its hash is stored)",
    )
    create_key.add_argument("name", help="what the key is for (1-100 characters), e.g. metrics-scraper")
    create_key.add_argument(
        "--expires-in-days", type=_days, default=None, metavar="N", help="expire after N days (default never)"
    )
    create_key.set_defaults(func=cmd_create_api_key)

    list_keys = sub.add_parser("list-api-keys", help="list API keys: prefix, name, state, dates (no secrets)")
    list_keys.set_defaults(func=cmd_list_api_keys)

    revoke_key = sub.add_parser(
        "revoke-api-key", help="revoke an API key by its prefix (takes effect at once)"
    )
    revoke_key.add_argument("prefix", help="the key's prefix from list-api-keys (or the whole key)")
    revoke_key.set_defaults(func=cmd_revoke_api_key)

    worker = sub.add_parser("worker", help="taskiq worker: delivers reminders (Redis stream, acknowledged)")
    worker.add_argument(
        "--max-tasks", type=int, default=500, help="concurrent tasks per worker (default 500)"
    )
    worker.add_argument("--grace", type=float, default=5.0, help="seconds to finish on SIGTERM (default 5)")
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser(
        "scheduler",
        help="enqueues due reminders from PostgreSQL, republishes missed events, dispatches webhooks",
    )
    scheduler.add_argument(
        "--update-interval",
        type=float,
        default=1.0,
        help="seconds between reads of the pending reminders in PostgreSQL (default 1)",
    )
    scheduler.add_argument(
        "--reconcile-interval",
        type=float,
        default=2.0,
        help="seconds between passes of the live-event outbox (default 2)",
    )
    scheduler.add_argument(
        "--lease",
        type=float,
        default=5.0,
        help="seconds after its enqueue a still-pending reminder is enqueued again (default 5)",
    )
    scheduler.add_argument(
        "--grace", type=float, default=5.0, help="seconds to finish on SIGTERM (default 5)"
    )
    scheduler.set_defaults(func=cmd_scheduler)

    webhook_cli.add_parser(sub)

    up = sub.add_parser(
        "up", help="run every Procfile process locally (embedded PostgreSQL/Redis when unset)"
    )
    up.add_argument("--procfile", default=str(ROOT / "Procfile"))
    up.add_argument(
        "--web-concurrency",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="web processes on PORT (default WEB_CONCURRENCY or 1)",
    )
    up.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C at a prompt, say; long-running commands handle their own
        return 128 + 2
    return result


if __name__ == "__main__":
    sys.exit(main())
