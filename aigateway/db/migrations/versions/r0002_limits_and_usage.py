"""per-key limits and allow-lists; the usage table

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for column in ("rpm", "rph", "tokens_per_day", "max_concurrent"):
        op.add_column("keys", sa.Column(column, sa.BigInteger))
    op.add_column("keys", sa.Column("models", sa.Text))
    op.create_table(
        "usage",
        sa.Column("id", Id, primary_key=True),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("key_id", sa.BigInteger, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("key_name", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger),
        sa.Column("completion_tokens", sa.BigInteger),
        sa.Column("duration_ms", sa.Double, nullable=False),
        sa.Column("ttfb_ms", sa.Double),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("client_gone", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("usage_ts", "usage", ["ts"])
    op.create_index("usage_key_ts", "usage", ["key_id", "ts"])


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
