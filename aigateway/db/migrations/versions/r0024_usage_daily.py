"""usage_daily: the usage records summed per UTC day, key, model, route and status

Revision ID: 0024
Revises: 0023

Summaries of long periods with any filter read it instead of every record. Made from the
records there are, in one GROUP BY statement, as aigateway/db/daily.py
sums them when this revision was written.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None
log = logging.getLogger("aigateway")

DAY = 86400
MAX_SUM_NANO = 4 * 10**18  # as records.py has it
LABELS = ("day", "key_id", "user", "key_name", "model", "route", "status")
SUMS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone", "cost",
    "costed", "duration_sum",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.BigInteger, primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("user", sa.Text, primary_key=True),
        sa.Column("key_name", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("route", sa.Text, primary_key=True),
        sa.Column("status", sa.Integer, primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS[:-1]),
        sa.Column("duration_sum", sa.Double, nullable=False),
    )
    bind = op.get_bind()
    records = bind.execute(sa.text("SELECT COUNT(*) FROM usage")).scalar() or 0
    if records > 100_000:
        log.warning("summing %d usage records into daily sums, once", records)
    bind.execute(sa.text(backfill_sql(bind.dialect.name)))


def backfill_sql(dialect: str) -> str:
    """Every record summed into its day's row of its combination."""
    if dialect == "sqlite":
        day, least = f"CAST(ts / {DAY} AS INTEGER) * {DAY}", "MIN"
    else:
        day, least = f"CAST(floor(ts / {DAY}) AS BIGINT) * {DAY}", "LEAST"
    # (in two parts: SQLite's SUM raises past 2^63)
    cost = "COALESCE(SUM(cost / 1000000000), 0) * 1000000000 + COALESCE(SUM(cost % 1000000000), 0)"
    labels = (day, "key_id", '"user"', "key_name", "COALESCE(model, '')", "route", "status")
    sums = (
        "COUNT(*)", "SUM(COALESCE(prompt_tokens, 0))", "SUM(COALESCE(completion_tokens, 0))",
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)", "SUM(client_gone)",
        f"{least}({cost}, {MAX_SUM_NANO})", "COUNT(cost)", "SUM(duration_ms)",
    )  # fmt: skip
    columns = ", ".join(f'"{name}"' for name in (*LABELS, *SUMS))
    return (
        f"INSERT INTO usage_daily ({columns}) SELECT {', '.join(labels)}, {', '.join(sums)}"
        f" FROM usage GROUP BY {', '.join(labels)}"
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
