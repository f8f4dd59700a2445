"""recurring series, occurrences and users' time zones

Revision ID: 0010_series
Revises: 0009_working_hours
Create Date: 2026-12-07 08:00:00

Self-contained: a new table for the series, two nullable columns on bookings (a booking that is not an
occurrence keeps NULL in both) and the user's own time zone (UTC until they set one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0010_series"
down_revision: str | None = "0009_working_hours"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("users", sa.Column("time_zone", sa.Text(), server_default="UTC", nullable=False))
    op.create_table(
        "booking_series",
        sa.Column("id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("resource_id", UUID(as_uuid=True), nullable=True),
        sa.Column("rrule", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.Text(), nullable=False),
        sa.Column("dtstart", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("exdates", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("reminder_minutes_before", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("duration_seconds > 0", name=op.f("ck_booking_series_duration")),
        sa.CheckConstraint("length(rrule) BETWEEN 1 AND 1000", name=op.f("ck_booking_series_rrule_length")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_booking_series_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_booking_series_resource_id_resources"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_series")),
    )
    op.create_index("ix_booking_series_user_id", "booking_series", ["user_id"])
    op.add_column("bookings", sa.Column("series_id", UUID(as_uuid=True), nullable=True))
    op.add_column("bookings", sa.Column("occurrence_start", sa.DateTime(timezone=True), nullable=True))
    op.create_foreign_key(
        op.f("fk_bookings_series_id_booking_series"),
        "bookings",
        "booking_series",
        ["series_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_check_constraint(
        op.f("ck_bookings_series_shape"), "bookings", "(series_id IS NULL) = (occurrence_start IS NULL)"
    )
    # One row per occurrence of a series (its RECURRENCE-ID), and the occurrences of a series in order.
    op.create_index(
        "uq_bookings_series_id_occurrence_start",
        "bookings",
        ["series_id", "occurrence_start"],
        unique=True,
        postgresql_where=sa.text("series_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_bookings_series_id_occurrence_start", table_name="bookings")
    op.drop_constraint(op.f("ck_bookings_series_shape"), "bookings", type_="check")
    op.drop_constraint(op.f("fk_bookings_series_id_booking_series"), "bookings", type_="foreignkey")
    op.drop_column("bookings", "occurrence_start")
    op.drop_column("bookings", "series_id")
    op.drop_index("ix_booking_series_user_id", table_name="booking_series")
    op.drop_table("booking_series")
    op.drop_column("users", "time_zone")
