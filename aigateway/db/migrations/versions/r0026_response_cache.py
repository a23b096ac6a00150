"""response cache: usage.cached, and the daily sums per cached mark

Revision ID: 0026
Revises: 0025

`usage.cached` is 1 for a request answered from the response cache (CACHE_SIZE), not by an
upstream; 0 for every earlier record, which an upstream answered. The daily sums
(usage_daily) gain the mark in their key, so that a Usage filter on it reads them, not
every record: the table is made anew with it (a primary key cannot be widened in place on
SQLite), every row it had copied as uncached.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

LABELS = ("day", "key_id", "user", "key_name", "model", "route", "status")
SUMS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone", "cost",
    "costed", "duration_sum",
)  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("cached", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "usage_daily_cached",
        sa.Column("day", sa.BigInteger, primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("user", sa.Text, primary_key=True),
        sa.Column("key_name", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("route", sa.Text, primary_key=True),
        sa.Column("status", sa.Integer, primary_key=True),
        sa.Column("cached", sa.Integer, primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS[:-1]),
        sa.Column("duration_sum", sa.Double, nullable=False),
    )
    columns = ", ".join(f'"{name}"' for name in (*LABELS, *SUMS))
    op.execute(
        f"INSERT INTO usage_daily_cached ({columns}, cached) SELECT {columns}, 0 FROM usage_daily"
    )
    op.drop_table("usage_daily")
    op.rename_table("usage_daily_cached", "usage_daily")


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
