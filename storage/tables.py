"""SQLAlchemy Core tables: the one `MetaData` that Alembic migrations are checked against."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, UUID

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

NOW = sa.text("now()")
GEN_UUID = sa.text("gen_random_uuid()")


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    ]


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    # A bigint per user: the exclusion constraint on bookings needs a scalar that fits int8range.
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False, server_default="user"),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    *_timestamps(),
    # The user's own IANA zone: the default zone of their series and of their availability labels.
    sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
    sa.CheckConstraint("role IN ('user', 'admin')", name="role"),
    sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),
    sa.Index("uq_users_email_lower", sa.text("lower(email)"), unique=True),
)

refresh_families = sa.Table(
    "refresh_families",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("revoke_reason", sa.Text),
    sa.Index("ix_refresh_families_user_id", "user_id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("jti", UUID(as_uuid=True), primary_key=True),
    sa.Column(
        "family_id",
        UUID(as_uuid=True),
        sa.ForeignKey("refresh_families.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True)),
    sa.Index("ix_refresh_tokens_family_id", "family_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("actor_id", UUID(as_uuid=True)),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("entity_id", UUID(as_uuid=True), nullable=False),
    sa.Column("before", JSONB),
    sa.Column("after", JSONB),
    sa.Index("ix_audit_log_entity_id", "entity_id"),
    sa.Index("ix_audit_log_at", "at"),
)

# Shared resources (rooms, desks, people, equipment) that many users book; retired, never deleted.
resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    # A bigint per resource, for the same reason as users.seq: the resource exclusion constraint.
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("kind", sa.Text, nullable=False, server_default="room"),
    sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("capacity", sa.Integer, nullable=False, server_default="1"),
    sa.Column("buffer_before_minutes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("buffer_after_minutes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("min_notice_minutes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_advance_days", sa.Integer, nullable=False, server_default="730"),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    # Working hours in time_zone (docs/AVAILABILITY.md): [{weekday, start, end}], NULL = open around the
    # clock; overrides [{date, intervals}], an empty list closes the day. Validated by the API.
    sa.Column("hours_weekly", JSONB),
    sa.Column("hours_overrides", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    *_timestamps(),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 255", name="name_length"),
    sa.CheckConstraint("capacity BETWEEN 1 AND 10000", name="capacity_range"),
    sa.CheckConstraint(
        "buffer_before_minutes BETWEEN 0 AND 1440 AND buffer_after_minutes BETWEEN 0 AND 1440",
        name="buffer_range",
    ),
    sa.CheckConstraint("min_notice_minutes >= 0 AND max_advance_days >= 0", name="window_range"),
    sa.Index(
        "uq_resources_name_lower_active",
        sa.text("lower(name)"),
        unique=True,
        postgresql_where=sa.text("active"),
    ),
)

ACTIVE_STATUSES = ("scheduled", "in-progress")
BOOKING_STATUSES = ("scheduled", "in-progress", "completed", "cancelled")
OVERLAP_CONSTRAINT = "ex_bookings_no_overlap"
RESOURCE_OVERLAP_CONSTRAINT = "ex_bookings_resource_no_overlap"

# A recurring series (docs/RECURRENCE.md): the rule and the template its occurrences were made from.
# Each occurrence is a row of `bookings` (series_id, occurrence_start = its RECURRENCE-ID).
booking_series = sa.Table(
    "booking_series",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("resource_id", UUID(as_uuid=True), sa.ForeignKey("resources.id", ondelete="RESTRICT")),
    sa.Column("rrule", sa.Text, nullable=False),  # normalized RFC 5545 RRULE value, UNTIL in UTC
    sa.Column("time_zone", sa.Text, nullable=False),  # the rule is expanded in this zone's local time
    sa.Column("dtstart", sa.DateTime(timezone=True), nullable=False),  # the first instance
    sa.Column("duration_seconds", sa.Integer, nullable=False),
    sa.Column("exdates", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),  # as given
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("location", sa.Text),
    sa.Column("notes", sa.Text),
    sa.Column("reminder_minutes_before", sa.Integer),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    *_timestamps(),
    sa.CheckConstraint("duration_seconds > 0", name="duration"),
    sa.CheckConstraint("length(rrule) BETWEEN 1 AND 1000", name="rrule_length"),
    sa.Index("ix_booking_series_user_id", "user_id"),
)

bookings = sa.Table(
    "bookings",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("user_seq", sa.BigInteger, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("location", sa.Text),
    sa.Column("notes", sa.Text),
    sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
    sa.Column("reminder_minutes_before", sa.Integer),
    sa.Column("reminder_sent_at", sa.DateTime(timezone=True)),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    *_timestamps(),
    # A resource booking (NULL: a personal one). busy_start/busy_end are start - buffer before and
    # end + buffer after, from the resource's buffers when the booking was written; resource_exclusive
    # is whether the resource had capacity 1 then (the exclusion constraint covers those rows).
    sa.Column("resource_id", UUID(as_uuid=True), sa.ForeignKey("resources.id", ondelete="RESTRICT")),
    sa.Column("resource_seq", sa.BigInteger),
    sa.Column("busy_start", sa.DateTime(timezone=True)),
    sa.Column("busy_end", sa.DateTime(timezone=True)),
    sa.Column("resource_exclusive", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attendees", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    # An occurrence of a series: the series and the instance of its rule this row is (RECURRENCE-ID;
    # start_time differs from it once the occurrence is moved).
    sa.Column("series_id", UUID(as_uuid=True), sa.ForeignKey("booking_series.id", ondelete="CASCADE")),
    sa.Column("occurrence_start", sa.DateTime(timezone=True)),
    sa.CheckConstraint("end_time > start_time", name="time_order"),
    sa.CheckConstraint("(series_id IS NULL) = (occurrence_start IS NULL)", name="series_shape"),
    sa.CheckConstraint(
        "(resource_id IS NULL) = (resource_seq IS NULL) AND (resource_id IS NULL) = (busy_start IS NULL) "
        "AND (resource_id IS NULL) = (busy_end IS NULL) AND (busy_end IS NULL OR busy_end > busy_start)",
        name="resource_shape",
    ),
    sa.CheckConstraint("status IN ('scheduled', 'in-progress', 'completed', 'cancelled')", name="status"),
    sa.CheckConstraint("reminder_minutes_before BETWEEN 0 AND 10080", name="reminder_range"),
    sa.Index("ix_bookings_user_id_start_time", "user_id", "start_time", "id"),
    sa.Index("ix_bookings_start_time", "start_time", "id"),
    sa.Index(
        "uq_bookings_series_id_occurrence_start",
        "series_id",
        "occurrence_start",
        unique=True,
        postgresql_where=sa.text("series_id IS NOT NULL"),
    ),
    # The overlap count and the busy time of a resource read its active busy ranges through this (a
    # personal booking is not in it, so personal inserts do not maintain it).
    sa.Index(
        "ix_bookings_resource_busy",
        sa.text("int8range(resource_seq, resource_seq, '[]')"),
        sa.text("tstzrange(busy_start, busy_end, '[)')"),
        postgresql_using="gist",
        postgresql_where=sa.text("resource_seq IS NOT NULL AND status IN ('scheduled', 'in-progress')"),
    ),
)
# The exclusion constraints live in the migrations (Alembic cannot autogenerate EXCLUDE over
# expressions); storage names them by the constants above.

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", JSON, nullable=False),  # json, not jsonb: a replay keeps the key order
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)

REMINDER_STATES = ("pending", "sent", "cancelled")

# The reminder intent, written in the booking's transaction; Redis only holds a copy to fire on time.
reminders = sa.Table(
    "reminders",
    metadata,
    sa.Column(
        "booking_id", UUID(as_uuid=True), sa.ForeignKey("bookings.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("user_id", UUID(as_uuid=True), nullable=False),
    # The booking start this reminder was armed for: a sent reminder re-arms only when the start moves.
    sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    # When the scheduler put (or will put) its delivery on the stream; NULL: not taken yet. A row still
    # pending a lease after this is taken again (server/worker/tasks.py ReminderScheduler).
    sa.Column("enqueued_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("state IN ('pending', 'sent', 'cancelled')", name="state"),
    # The schedule: the pending rows by due time (with what a tick filters on, for index-only reads).
    sa.Index(
        "ix_reminders_schedule",
        "due_at",
        postgresql_include=["booking_id", "enqueued_at", "updated_at"],
        postgresql_where=sa.text("state = 'pending'"),
    ),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("data", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("read_at", sa.DateTime(timezone=True)),
    # The live event's outbox: NULL until the event is on Redis (the scheduler republishes stragglers).
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Index("ix_notifications_user_id_created_at", "user_id", sa.text("created_at DESC"), "id"),
    sa.Index("ix_notifications_unpublished", "created_at", postgresql_where=sa.text("published_at IS NULL")),
)

# Service-to-service credentials for the job service (`booking create-api-key`). Only a SHA-256 of the
# secret is kept: the secret is 256 random bits, so a fast hash cannot be brute-forced and needs no salt
# or work factor (argon2 is for low-entropy passwords; here it would only cost CPU on every call).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("name", sa.Text, nullable=False),
    # The public part of the key (`bk_<prefix>_<secret>`): shown in listings, looked up on each call.
    sa.Column("prefix", sa.Text, nullable=False, unique=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name="name_length"),
    sa.CheckConstraint("length(secret_hash) = 64", name="secret_hash_length"),
)

# Secret iCalendar subscription URLs (docs/CALENDAR.md): `/cal/<prefix>_<secret>.ics`. The prefix finds
# the row and names the feed in listings; only a SHA-256 of the secret (256 random bits) is kept, as for
# api_keys. Rotation replaces both on the same row; a revoked row stays, refusing, for the record.
CALENDAR_FEED_KINDS = ("bookings", "resource")

calendar_feeds = sa.Table(
    "calendar_feeds",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # bookings: the owner's own; resource: a resource's busy time
    sa.Column("resource_id", UUID(as_uuid=True), sa.ForeignKey("resources.id", ondelete="CASCADE")),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False, unique=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("rotated_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("kind IN ('bookings', 'resource')", name="kind"),
    sa.CheckConstraint("(kind = 'resource') = (resource_id IS NOT NULL)", name="kind_resource"),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name="name_length"),
    sa.CheckConstraint("length(secret_hash) = 64", name="secret_hash_length"),
    sa.Index("ix_calendar_feeds_user_id", "user_id"),
)

# --- outbound webhooks (docs/WEBHOOKS.md) -----------------------------------------------------------

WEBHOOK_MESSAGE_STATES = ("pending", "delivered", "failed")

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # An admin's endpoint may subscribe to every user's bookings; anyone else's sees their own only.
    sa.Column("all_bookings", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", ARRAY(sa.Text), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    # Kept as given (it must sign, so it cannot be hashed); never returned after create/rotate.
    # docs/SECURITY.md explains why it is not encrypted at rest.
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("previous_secret", sa.Text),
    sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True)),
    sa.Column("disabled_reason", sa.Text),
    # The first failure since the last success: an endpoint failing for 5 days is disabled.
    sa.Column("failing_since", sa.DateTime(timezone=True)),
    *_timestamps(),
    sa.CheckConstraint("length(url) BETWEEN 1 AND 2048", name="url_length"),
    sa.Index("ix_webhook_endpoints_user_id", "user_id"),
)

# The outbox: one row per (event, endpoint), written in the transaction of the change it reports.
webhook_messages = sa.Table(
    "webhook_messages",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID),
    # Commit order within the table: an endpoint gets one booking's messages in this order.
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
    sa.Column(
        "endpoint_id",
        UUID(as_uuid=True),
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("booking_id", UUID(as_uuid=True)),  # the ordering key; no foreign key: deletes are events too
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("locked_until", sa.DateTime(timezone=True)),  # a worker's lease on the attempt in flight
    sa.Column("enqueued_at", sa.DateTime(timezone=True)),  # the scheduler's last enqueue of it
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("last_status", sa.Integer),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
    sa.Index(
        "ix_webhook_messages_next_attempt_at_pending",
        "next_attempt_at",
        postgresql_where=sa.text("state = 'pending'"),
    ),
    sa.Index(
        "ix_webhook_messages_endpoint_id_booking_id_seq_pending",
        "endpoint_id",
        "booking_id",
        "seq",
        postgresql_where=sa.text("state = 'pending'"),
    ),
    sa.Index("ix_webhook_messages_endpoint_id_seq", "endpoint_id", "seq"),
    # The attempts in flight per endpoint (its concurrency limit): a handful of rows at any time.
    sa.Index(
        "ix_webhook_messages_endpoint_id_locked",
        "endpoint_id",
        postgresql_where=sa.text("locked_until IS NOT NULL"),
    ),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "message_id",
        UUID(as_uuid=True),
        sa.ForeignKey("webhook_messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("outcome", sa.Text, nullable=False),  # delivered | failed | gone | refused
    sa.Column("response_code", sa.Integer),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("response_body", sa.Text),  # the first 1 KiB of the answer
    sa.Column("error", sa.Text),
    sa.Index("ix_webhook_attempts_message_id", "message_id", "id"),
)

# A user's own weekly hours and time zone, used when others ask for their free/busy.
user_availability = sa.Table(
    "user_availability",
    metadata,
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("weekly", JSONB),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
)
