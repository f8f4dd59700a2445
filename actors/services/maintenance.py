"""The job service's housekeeping over the database: the pending-reminder count for `/jobs/metrics` and
the purges of `/jobs/cleanup`, so the job endpoints call a service instead of the stores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from storage import idempotency as idempotency_store
from storage import reminders as reminder_store
from storage import tokens as token_store
from storage import webhook_log as webhook_store
from storage.db import Database

IDEMPOTENCY_TTL = timedelta(hours=24)
WEBHOOK_LOG_TTL = timedelta(days=30)  # delivered and given-up webhook messages, with their attempts


@dataclass(frozen=True, slots=True)
class Purged:
    """How many rows each purge deleted."""

    idempotency_keys: int
    notifications: int
    refresh_tokens: int
    refresh_families: int
    webhook_messages: int


class Maintenance:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending_reminders(self) -> int:
        async with self._db.connect() as conn:
            return await reminder_store.count_pending(conn)

    async def cleanup(self, *, now: datetime, notification_days: int) -> Purged:
        """One transaction: idempotency keys older than a day, notifications read more than
        `notification_days` ago, expired refresh tokens, settled webhook messages older than 30 days."""
        async with self._db.begin() as conn:
            keys = await idempotency_store.purge_idempotency(conn, older_than=now - IDEMPOTENCY_TTL)
            notes = await reminder_store.purge_read_notifications(
                conn, read_before=now - timedelta(days=notification_days)
            )
            tokens, families = await token_store.purge_expired(conn, expired_before=now)
            hooks = await webhook_store.purge_settled(conn, older_than=now - WEBHOOK_LOG_TTL)
        return Purged(keys, notes, tokens, families, hooks)
