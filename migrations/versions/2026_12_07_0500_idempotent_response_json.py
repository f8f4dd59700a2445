"""idempotency_keys.response as json: a replay keeps the first response's key order

Revision ID: 0006_idempotent_response_json
Revises: 0005_api_keys
Create Date: 2026-12-07 05:00:00
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy.dialects.postgresql import JSON, JSONB

revision: str = "0006_idempotent_response_json"
down_revision: str | None = "0005_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # jsonb reorders object keys (shortest first); json keeps the text as written, so a replayed
    # response is the same document, key for key, as the first one. Rows stored before keep jsonb's order.
    op.alter_column(
        "idempotency_keys", "response", type_=JSON(), existing_type=JSONB(), postgresql_using="response::json"
    )


def downgrade() -> None:
    op.alter_column(
        "idempotency_keys",
        "response",
        type_=JSONB(),
        existing_type=JSON(),
        postgresql_using="response::jsonb",
    )
