"""limit_counters, gateway_instances, instance_in_flight: limits shared by several gateways

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_counters",
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("minute_start", sa.BigInteger, nullable=False),
        sa.Column("minute_used", sa.BigInteger, nullable=False),
        sa.Column("hour_start", sa.BigInteger, nullable=False),
        sa.Column("hour_used", sa.BigInteger, nullable=False),
        sa.Column("day_start", sa.BigInteger, nullable=False),
        sa.Column("day_tokens", sa.BigInteger, nullable=False),
        sa.Column("day_reserved", sa.BigInteger, nullable=False),
        sa.Column("in_flight", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "gateway_instances",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.Double, nullable=False),
    )
    op.create_table(
        "instance_in_flight",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
