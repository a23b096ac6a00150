"""alerts_outbox: alerts waiting for their webhook, and those sent or given up

Revision ID: 0020
Revises: 0019

One row per alert (kind|subject|period, unique), so an event raised twice or by two
gateways is sent once. New: earlier releases only logged budget alerts and upstream
changes, so there is nothing to fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("dedupe", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("due_at", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("done_at", sa.Double),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("alerts_outbox_due", "alerts_outbox", ["state", "due_at"])


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
