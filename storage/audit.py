"""The audit log: one row per change of a booking or a resource (who, what, before, after), and its
pages: queries only, no rules."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from storage.db import Connection, P, Query, page_of, paged
from storage.tables import audit_log

_AUDIT = Query(
    sa.insert(audit_log).values(
        actor_id=P("actor_id"),
        action=P("action"),
        entity=P("entity"),
        entity_id=P("entity_id"),
        before=P("before", type_=audit_log.c.before.type),
        after=P("after", type_=audit_log.c.after.type),
    )
)
# The audit row of every booking a create statement's `created` CTE returns (in the resource and series
# create statements, beside their reminder and outbox arms).
AUDIT_CREATED = (
    "INSERT INTO audit_log (actor_id, action, entity, entity_id, after) "
    "SELECT CAST(:actor_id AS uuid), 'create', 'booking', created.id, to_jsonb(created) FROM created"
)
_AUDIT_PAGE = paged(audit_log, where=[audit_log.c.entity_id == P("entity_id")], order_by=[audit_log.c.id])


async def audit(
    conn: Connection,
    *,
    actor_id: uuid.UUID | None,
    action: str,
    entity_id: uuid.UUID,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    entity: str = "booking",
) -> None:
    await _AUDIT.execute(
        conn, actor_id=actor_id, action=action, entity=entity, entity_id=entity_id, before=before, after=after
    )


async def audit_entries(
    conn: Connection, *, entity_id: uuid.UUID, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    total, rows = await page_of(_AUDIT_PAGE, conn, entity_id=entity_id, offset=offset, limit=limit)
    return rows, total
