"""reminder schedule: PostgreSQL's pending rows are the schedule

Revision ID: 0012_reminder_schedule
Revises: 0011_calendar_feeds
Create Date: 2026-12-07 10:00:00

`enqueued_at`: when the scheduler put (or will put, at `due_at - LEAD`) the row's delivery on the taskiq
stream; a row still pending a lease after it is taken again (its message was lost). NULL: not yet taken.
The scheduler's index: the partial index on `due_at` of the pending rows, now carrying `enqueued_at` and
`updated_at`, so a tick decides which rows to take from the index alone before locking them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_reminder_schedule"
down_revision: str | None = "0011_calendar_feeds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reminders", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_reminders_schedule",
        "reminders",
        ["due_at"],
        postgresql_include=["booking_id", "enqueued_at", "updated_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.drop_index("ix_reminders_due_at_pending", table_name="reminders")


def downgrade() -> None:
    op.create_index(
        "ix_reminders_due_at_pending", "reminders", ["due_at"], postgresql_where=sa.text("state = 'pending'")
    )
    op.drop_index("ix_reminders_schedule", table_name="reminders")
    op.drop_column("reminders", "enqueued_at")
