"""resources, and bookings of a resource (capacity, buffers, attendees)

Revision ID: 0008_resources
Revises: 0007_webhooks
Create Date: 2026-12-07 06:00:00

Self-contained: it only adds a table and nullable (or defaulted) booking columns, so existing bookings
stay as they are (personal bookings have no resource) and the chain can be re-pointed when another
migration lands beside it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0008_resources"
down_revision: str | None = "0007_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
ACTIVE = "status IN ('scheduled', 'in-progress')"


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), server_default="room", nullable=False),
        sa.Column("time_zone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("capacity", sa.Integer(), server_default="1", nullable=False),
        sa.Column("buffer_before_minutes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("buffer_after_minutes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_advance_days", sa.Integer(), server_default="730", nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 255", name=op.f("ck_resources_name_length")),
        sa.CheckConstraint("capacity BETWEEN 1 AND 10000", name=op.f("ck_resources_capacity_range")),
        sa.CheckConstraint(
            "buffer_before_minutes BETWEEN 0 AND 1440 AND buffer_after_minutes BETWEEN 0 AND 1440",
            name=op.f("ck_resources_buffer_range"),
        ),
        sa.CheckConstraint(
            "min_notice_minutes >= 0 AND max_advance_days >= 0", name=op.f("ck_resources_window_range")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.UniqueConstraint("seq", name=op.f("uq_resources_seq")),
    )
    op.create_index(
        "uq_resources_name_lower_active",
        "resources",
        [sa.text("lower(name)")],
        unique=True,
        postgresql_where=sa.text("active"),
    )

    op.add_column("bookings", sa.Column("resource_id", UUID(as_uuid=True), nullable=True))
    op.add_column("bookings", sa.Column("resource_seq", sa.BigInteger(), nullable=True))
    op.add_column("bookings", sa.Column("busy_start", sa.DateTime(timezone=True), nullable=True))
    op.add_column("bookings", sa.Column("busy_end", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "bookings",
        sa.Column("resource_exclusive", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "bookings",
        sa.Column("attendees", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )
    op.create_foreign_key(
        op.f("fk_bookings_resource_id_resources"),
        "bookings",
        "resources",
        ["resource_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_check_constraint(
        op.f("ck_bookings_resource_shape"),
        "bookings",
        "(resource_id IS NULL) = (resource_seq IS NULL) AND (resource_id IS NULL) = (busy_start IS NULL) "
        "AND (resource_id IS NULL) = (busy_end IS NULL) AND (busy_end IS NULL OR busy_end > busy_start)",
    )
    # Capacity 1: no two active bookings of the resource whose busy ranges (buffers included) overlap,
    # enforced by the database whatever process writes. The resource as a one-point int8range, like the
    # user in ex_bookings_no_overlap (no btree_gist on the embedded server).
    op.execute(
        f"""
        ALTER TABLE bookings ADD CONSTRAINT ex_bookings_resource_no_overlap
        EXCLUDE USING gist (
            int8range(resource_seq, resource_seq, '[]') WITH &&,
            tstzrange(busy_start, busy_end, '[)') WITH &&
        ) WHERE ({ACTIVE} AND resource_exclusive)
        """
    )
    # The overlap count (capacity N, under the resource's row lock) and the busy time read active busy
    # ranges through this; personal bookings are not in it.
    op.execute(
        f"""
        CREATE INDEX ix_bookings_resource_busy ON bookings USING gist (
            int8range(resource_seq, resource_seq, '[]'),
            tstzrange(busy_start, busy_end, '[)')
        ) WHERE (resource_seq IS NOT NULL AND {ACTIVE})
        """
    )

    # Capacity N in one round trip: the row lock, then the count in a statement of its own (a VOLATILE
    # function's statements each take a fresh snapshot under READ COMMITTED, so the count sees every
    # booking committed by the lock's previous holder). storage/resource_bookings.py calls it inside the
    # insert.
    op.execute(
        f"""
        CREATE FUNCTION resource_has_room(
            p_resource_id uuid, p_version integer, p_seq bigint,
            p_start timestamptz, p_end timestamptz, p_capacity integer
        ) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM 1 FROM resources WHERE id = p_resource_id AND version = p_version FOR UPDATE;
            IF NOT FOUND THEN
                RETURN false;  -- changed since the writer read it: the writer reads it again
            END IF;
            RETURN NOT EXISTS (
                WITH o AS (
                    SELECT busy_start, busy_end FROM bookings
                    WHERE resource_seq IS NOT NULL AND {ACTIVE}
                      AND int8range(resource_seq, resource_seq, '[]') && int8range(p_seq, p_seq, '[]')
                      AND tstzrange(busy_start, busy_end, '[)') && tstzrange(p_start, p_end, '[)')
                )
                SELECT 1 FROM (
                    SELECT p_start AS p UNION SELECT o.busy_start FROM o WHERE o.busy_start > p_start
                ) points
                WHERE (SELECT count(*) FROM o WHERE o.busy_start <= points.p AND o.busy_end > points.p)
                      >= p_capacity
            );
        END
        $$
        """  # noqa: S608  (a module constant, no input)
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION resource_has_room(uuid, integer, bigint, timestamptz, timestamptz, integer)")
    op.execute("DROP INDEX ix_bookings_resource_busy")
    op.execute("ALTER TABLE bookings DROP CONSTRAINT ex_bookings_resource_no_overlap")
    op.drop_constraint(op.f("ck_bookings_resource_shape"), "bookings", type_="check")
    op.drop_constraint(op.f("fk_bookings_resource_id_resources"), "bookings", type_="foreignkey")
    for column in (
        "attendees",
        "resource_exclusive",
        "busy_end",
        "busy_start",
        "resource_seq",
        "resource_id",
    ):
        op.drop_column("bookings", column)
    op.drop_index("uq_resources_name_lower_active", table_name="resources")
    op.drop_table("resources")
