"""usage_hourly: the usage records summed per hour by key, model and route

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# As in aigateway/rollups.py when this revision was written (a later change of buckets
# needs a revision of its own).
BOUNDS = tuple(2 ** (i / 2) for i in range(43))
BUCKETS = len(BOUNDS) + 1
DURATIONS = tuple(f"d{i:02d}" for i in range(BUCKETS))
TTFBS = tuple(f"t{i:02d}" for i in range(BUCKETS))
COUNTS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone",
    "cost", "costed", *DURATIONS, *TTFBS,
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("dim", sa.Text, primary_key=True),
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("user", sa.Text),
        sa.Column("key_name", sa.Text),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in COUNTS),
        sa.Column("duration_sum", sa.Double, nullable=False),
    )
    bind = op.get_bind()
    for dim, value in BACKFILLS:
        bind.exec_driver_sql(_backfill(dim, value, bind.dialect.name == "sqlite"))


# Each dimension and the value of a record in it.
BACKFILLS = (
    ("all", "''"),
    ("user", '"user"'),
    ("key", "CAST(key_id AS TEXT)"),
    ("model", "COALESCE(model, '')"),
    ("route", "route"),
)


def _backfill(dim: str, value: str, sqlite: bool) -> str:
    """The records made so far, summed in one pass: buckets found by a CASE with the same
    bounds as the gateway's bisect."""
    if sqlite:
        hour = "CAST(ts / 3600 AS INTEGER) * 3600"  # truncates: ts is positive
    else:
        hour = "CAST(FLOOR(ts / 3600) AS BIGINT) * 3600"

    def bucket_of(column: str) -> str:
        steps = " ".join(f"WHEN {column} < {bound!r} THEN {i}" for i, bound in enumerate(BOUNDS))
        return f"CASE WHEN {column} IS NULL THEN NULL {steps} ELSE {len(BOUNDS)} END"

    named = 'MIN("user"), MIN(key_name)' if dim == "key" else "NULL, NULL"
    sums = [
        "COUNT(*)",
        "SUM(COALESCE(prompt_tokens, 0))",
        "SUM(COALESCE(completion_tokens, 0))",
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)",
        "SUM(client_gone)",
        "SUM(COALESCE(cost, 0))",
        "COUNT(cost)",
        *(f"SUM(CASE WHEN db = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
        *(f"SUM(CASE WHEN tb = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
        "SUM(duration_ms)",
    ]
    columns = ", ".join(f'"{c}"' for c in ("dim", "hour", "value", "user", "key_name", *COUNTS))
    return (
        f"INSERT INTO usage_hourly ({columns}, duration_sum)"
        f" SELECT '{dim}', hour, value, {named}, {', '.join(sums)}"
        f" FROM (SELECT *, {hour} AS hour, {value} AS value,"
        f" {bucket_of('duration_ms')} AS db, {bucket_of('ttfb_ms')} AS tb FROM usage) AS r"
        f" GROUP BY hour, value"
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
