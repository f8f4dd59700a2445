"""notifications.published_at: the live event's outbox

Revision ID: 0004_notification_outbox
Revises: 0003_reminders
Create Date: 2026-12-03 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_notification_outbox"
down_revision: str | None = "0003_reminders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    # Rows written before the outbox existed were published when they were written.
    op.execute("UPDATE notifications SET published_at = created_at")
    op.create_index(
        op.f("ix_notifications_unpublished"),
        "notifications",
        ["created_at"],
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_notifications_unpublished"), table_name="notifications")
    op.drop_column("notifications", "published_at")
