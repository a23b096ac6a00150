"""usage_hourly: the usage records summed per hour, in all and per user, key, model, route

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
log = logging.getLogger("aigateway")

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
    backfill(op.get_bind())


def backfill(bind: sa.Connection) -> None:
    """Sum the records made so far, an hour of them at a time (in the order of the ts
    index, skipping empty hours), the way the gateway's writer sums a batch."""
    columns = ("dim", "hour", "value", "user", "key_name", *COUNTS, "duration_sum")
    table = sa.table("usage_hourly", *(sa.column(name) for name in columns))
    read = sa.text(
        'SELECT key_id, "user", key_name, route, model, status, prompt_tokens,'
        " completion_tokens, duration_ms, ttfb_ms, client_gone, cost"
        " FROM usage WHERE ts >= :start AND ts < :end"
    )
    first = sa.text("SELECT MIN(ts) FROM usage WHERE ts >= :start")
    records = bind.execute(sa.text("SELECT COUNT(*) FROM usage")).scalar() or 0
    if records > 100_000:
        log.warning(
            "summing %d usage records into hourly rollups, once (about 40 s a million)", records
        )
    found = bind.execute(first, {"start": 0}).scalar()
    while found is not None:
        hour = int(found // 3600) * 3600
        sums: dict[tuple[str, str], list[Any]] = {}
        for row in bind.execute(read, {"start": hour, "end": hour + 3600}):
            key_id, user, key_name, route, model = row[:5]
            for dim, value, names in (
                ("all", "", (None, None)),
                ("user", user, (None, None)),
                ("key", str(key_id), (user, key_name)),
                ("model", model or "", (None, None)),
                ("route", route, (None, None)),
            ):
                group = sums.get((dim, value))
                if group is None:
                    group = sums[(dim, value)] = [*names, *[0] * (len(COUNTS) + 1)]
                _add(group, row)
        bind.execute(
            table.insert(),
            [
                dict(zip(columns, (dim, hour, value, *group), strict=True))
                for (dim, value), group in sorted(sums.items())
            ],
        )
        found = bind.execute(first, {"start": hour + 3600}).scalar()


def _add(group: list[Any], row: Any) -> None:
    """Add a record to a group: [user, key_name, *COUNTS, duration_sum]."""
    status, prompt, completion, duration, ttfb, gone, cost = row[5:]
    group[2] += 1
    group[3] += prompt or 0
    group[4] += completion or 0
    group[5] += status >= 400
    group[6] += gone
    if cost is not None:
        group[7] += cost
        group[8] += 1
    group[9 + bisect_right(BOUNDS, duration)] += 1
    if ttfb is not None:
        group[9 + BUCKETS + bisect_right(BOUNDS, ttfb)] += 1
    group[-1] += duration


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
