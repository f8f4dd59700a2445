"""calendar feeds: secret iCalendar subscription URLs

Revision ID: 0011_calendar_feeds
Revises: 0010_series
Create Date: 2026-12-07 09:00:00

Self-contained: one new table. A feed's URL carries `<prefix>_<secret>`; only the SHA-256 of the secret is
kept, like api_keys.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0011_calendar_feeds"
down_revision: str | None = "0010_series"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "calendar_feeds",
        sa.Column("id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("resource_id", UUID(as_uuid=True), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('bookings', 'resource')", name=op.f("ck_calendar_feeds_kind")),
        sa.CheckConstraint(
            "(kind = 'resource') = (resource_id IS NOT NULL)", name=op.f("ck_calendar_feeds_kind_resource")
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name=op.f("ck_calendar_feeds_name_length")),
        sa.CheckConstraint("length(secret_hash) = 64", name=op.f("ck_calendar_feeds_secret_hash_length")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_calendar_feeds_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_calendar_feeds_resource_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_feeds")),
        sa.UniqueConstraint("prefix", name=op.f("uq_calendar_feeds_prefix")),
    )
    op.create_index("ix_calendar_feeds_user_id", "calendar_feeds", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_calendar_feeds_user_id", table_name="calendar_feeds")
    op.drop_table("calendar_feeds")
