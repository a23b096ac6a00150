"""usage_hourly: each key's usage per model (dim key_model:ID), for a key's charts by model

Revision ID: 0023
Revises: 0022

The rows the gateway's writer adds from now on for every batch, made here once from the
records already there, an hour of them at a time, the way revision 0011 made the others.
The other rows stay as they are.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None
log = logging.getLogger("aigateway")

# As in aigateway/db/rollups.py when this revision was written.
BOUNDS = tuple(2 ** (i / 2) for i in range(43))
BUCKETS = len(BOUNDS) + 1
DURATIONS = tuple(f"d{i:02d}" for i in range(BUCKETS))
TTFBS = tuple(f"t{i:02d}" for i in range(BUCKETS))
COUNTS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone",
    "cost", "costed", *DURATIONS, *TTFBS,
)  # fmt: skip
MAX_SUM_NANO = 4 * 10**18  # an hour's cost stops there (records.MAX_SUM_NANO)


def upgrade() -> None:
    bind = op.get_bind()
    columns = ("dim", "hour", "value", "user", "key_name", *COUNTS, "duration_sum")
    table = sa.table("usage_hourly", *(sa.column(name) for name in columns))
    read = sa.text(
        'SELECT key_id, "user", key_name, model, status, prompt_tokens,'
        " completion_tokens, duration_ms, ttfb_ms, client_gone, cost"
        " FROM usage WHERE ts >= :start AND ts < :end"
    )
    first = sa.text("SELECT MIN(ts) FROM usage WHERE ts >= :start")
    records = bind.execute(sa.text("SELECT COUNT(*) FROM usage")).scalar() or 0
    if records > 100_000:
        log.warning("summing %d usage records per key and model, once, an hour at a time", records)
    found = bind.execute(first, {"start": 0}).scalar()
    while found is not None:
        hour = int(found // 3600) * 3600
        sums: dict[tuple[str, str], list[Any]] = {}
        for row in bind.execute(read, {"start": hour, "end": hour + 3600}):
            key_id, user, key_name, model = row[:4]
            where = (f"key_model:{key_id}", model or "")
            group = sums.get(where)
            if group is None:
                group = sums[where] = [user, key_name, *[0] * (len(COUNTS) + 1)]
            _add(group, row[4:])
        bind.execute(
            table.insert(),
            [
                dict(zip(columns, (dim, hour, value, *group), strict=True))
                for (dim, value), group in sorted(sums.items())
            ],
        )
        found = bind.execute(first, {"start": hour + 3600}).scalar()


def _add(group: list[Any], measures: Any) -> None:
    """Add a record to a group: [user, key_name, *COUNTS, duration_sum]."""
    status, prompt, completion, duration, ttfb, gone, cost = measures
    group[2] += 1
    group[3] += prompt or 0
    group[4] += completion or 0
    group[5] += status >= 400
    group[6] += bool(gone)
    if cost is not None:
        group[7] = min(MAX_SUM_NANO, group[7] + cost)
        group[8] += 1
    group[9 + bisect_right(BOUNDS, duration)] += 1
    if ttfb is not None:
        group[9 + BUCKETS + bisect_right(BOUNDS, ttfb)] += 1
    group[-1] += duration


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
