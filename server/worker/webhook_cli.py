"""`booking webhooks list|replay`: the operator's view of webhook endpoints, and replays of what the
retry schedule gave up on (or any one message). A replay only marks messages pending in PostgreSQL; the
scheduler's dispatcher enqueues them within WEBHOOK_POLL_SECONDS, so the command needs no Redis."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from server.base.settings import Settings, SettingsError
from storage import webhook_endpoints as endpoint_store
from storage import webhook_log as store
from storage.db import Database


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else "-"


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {raw!r}") from None


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")


async def _list(db: Database) -> int:
    async with db.connect() as conn:
        found = await store.summaries(conn)
    rows = [("ID", "STATE", "OWNER", "EVENTS", "PENDING", "FAILED", "DELIVERED", "LAST DELIVERED", "URL")]
    for s in found:
        e = s.endpoint
        state = "active" if e.active else f"disabled ({e.disabled_reason or 'by its owner'})"
        rows.append(
            (
                str(e.id),
                state,
                str(e.user_id) + (" (all bookings)" if e.all_bookings else ""),
                ",".join(e.events),
                str(s.pending),
                str(s.failed),
                str(s.delivered),
                _when(s.last_delivered_at),
                e.url,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())  # noqa: T201
    return 0


async def _replay(db: Database, args: argparse.Namespace) -> int:
    async with db.connect() as conn:
        endpoint = await endpoint_store.get_endpoint(conn, args.endpoint)
        if endpoint is None:
            sys.exit(f"error: no webhook endpoint {args.endpoint}")
        if args.delivery is not None:
            message = await store.redeliver(conn, endpoint_id=endpoint.id, message_id=args.delivery)
            if message is None:
                sys.exit(f"error: endpoint {endpoint.id} has no delivery {args.delivery}")
            ids = [message.id]
        else:
            ids = await store.redeliver_failed(conn, endpoint_id=endpoint.id)
    note = "" if endpoint.active else " (the endpoint is disabled: they wait until it is enabled)"
    print(f"{len(ids)} message(s) to {endpoint.url} queued for delivery{note}")  # noqa: T201
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    settings = _settings()

    async def run() -> int:
        db = await Database.open(settings.database_url, pool_size=1, timeout=settings.db_timeout)
        try:
            return await (_list(db) if args.action == "list" else _replay(db, args))
        finally:
            await db.close()

    return asyncio.run(run())


def add_parser(sub: Any) -> None:
    """The `webhooks` subcommand, on the CLI's subparsers."""
    parser = sub.add_parser(
        "webhooks", help="webhook endpoints: list them with their queues, replay deliveries"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every endpoint: state, owner, events, pending/failed/delivered counts")
    replay = actions.add_parser(
        "replay", help="send an endpoint's given-up messages again (or one delivery) with their webhook-id"
    )
    replay.add_argument("endpoint", type=_uuid, help="the endpoint's id (see `booking webhooks list`)")
    replay.add_argument("--delivery", type=_uuid, help="only this delivery (its id in the delivery log)")
    parser.set_defaults(func=cmd_webhooks)
