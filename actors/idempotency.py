"""Idempotency-Key on creates: the request's fingerprint, and the claim that either lets a request
through or hands back the first answer to replay (bookings, resource bookings and series alike)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from actors.domain.errors import IdempotencyMismatch, Unavailable
from storage import idempotency as store
from storage.db import Connection


def request_hash(fields: Mapping[str, Any]) -> str:
    """The body's fingerprint for Idempotency-Key: the same instants in other offsets are the same body."""
    canonical = json.dumps(
        {k: (v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v) for k, v in fields.items()},
        separators=(",", ":"),
        sort_keys=True,
        default=str,  # a resourceId (UUID)
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(conn: Connection, *, owner_id: uuid.UUID, key: str, digest: str) -> Any | None:
    """In the create's transaction: None when this request now holds the key (go on, then store the
    answer); else the answer the key's first request got, to replay. Another body under the same key
    is refused; a key claimed but purged before we read it is retried by the caller."""
    if await store.claim_idempotency_key(conn, user_id=owner_id, key=key, request_hash=digest):
        return None
    stored = await store.get_idempotent(conn, user_id=owner_id, key=key)
    if stored is None:  # purged between our claim and our read
        raise Unavailable("idempotency key is being processed; retry")
    if stored.request_hash != digest:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different request body")
    return stored.response
