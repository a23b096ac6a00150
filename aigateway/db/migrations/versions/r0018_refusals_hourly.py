"""refusals_hourly: requests the gateway refused, counted per hour, reason and key

Revision ID: 0018
Revises: 0017

One row per (hour, reason, key id); requests refused before a key was known (missing,
malformed or unknown keys) count under key id -1 with an empty user and key name, so a
flood of made-up keys adds to one row per hour. Gateways add to a row (an upsert that
adds), never overwrite it. New: nothing to fill from earlier releases, which did not
count refusals anywhere but in their logs and /metrics.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refusals_hourly",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("reason", sa.Text, primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("key_name", sa.Text, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
    )
    op.create_index("refusals_hourly_user", "refusals_hourly", ["user", "hour"])


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
