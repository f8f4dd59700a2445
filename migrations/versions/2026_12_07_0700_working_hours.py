"""working hours of resources and users' own availability

Revision ID: 0009_working_hours
Revises: 0008_resources
Create Date: 2026-12-07 07:00:00

Self-contained: two columns on resources (defaults keep every resource open around the clock) and a
new table keyed by the user.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0009_working_hours"
down_revision: str | None = "0008_resources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    # A resource's working hours live on its row, so whatever reads the resource (its actor's cached row,
    # checked by version inside each insert) has the hours it must check, and a change of hours moves the
    # resource's version. hours_weekly NULL: open around the clock (every resource until it gets hours).
    op.add_column("resources", sa.Column("hours_weekly", JSONB(), nullable=True))
    op.add_column(
        "resources",
        sa.Column("hours_overrides", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )
    op.create_table(
        "user_availability",
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("time_zone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("weekly", JSONB(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_availability_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_availability"),
    )


def downgrade() -> None:
    op.drop_table("user_availability")
    op.drop_column("resources", "hours_overrides")
    op.drop_column("resources", "hours_weekly")
