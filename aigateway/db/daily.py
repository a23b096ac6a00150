"""The daily cube: the usage records summed per UTC day, key (with its user and name as
the records have them), model, route, status and cached mark; counts and sums only, no
histograms.

Any filter the Usage page offers (user, key, model, route, status, the response cache's
mark, and any mix of them)
is a condition on the cube's columns, so a summary of a long period reads a row per day
and combination instead of every record. Written by the store in the same transaction
as the records and usage_hourly (a journal replay writes neither twice), so the sums are
exact; pruned with them, the day the cut falls in summed again from the records left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from ..records import DAY, MAX_SUM_NANO, saturated
from .rollups import COUNTED, SUM_COLUMNS, added_sql, placeholders

if TYPE_CHECKING:
    from ..records import UsageRecord

# What a cube row holds per combination, in the order of SUM_COLUMNS (the hourly sums
# before their latency buckets), so that rollups.Totals adds them up alike.
DAILY_SUMS = SUM_COLUMNS[:COUNTED]
# The combination a row sums (its primary key); a record without a model is under "".
DAILY_LABELS = ("day", "key_id", "user", "key_name", "model", "route", "status", "cached")


def daily_rows(records: Sequence[UsageRecord]) -> list[tuple[object, ...]]:
    """What `records` add to the cube: rows of (*DAILY_LABELS, *DAILY_SUMS), sorted, so
    that two gateways adding to the same rows lock them in the same order. A batch holds
    a handful of combinations, so one dict step per record is all this costs."""
    groups: dict[tuple[int, int, str, str, str, str, int, int], list[float]] = {}
    for r in records:
        day = int(r.ts // DAY) * DAY
        label = (day, r.key_id, r.user, r.key_name, r.model or "", r.route, r.status, int(r.cached))
        sums = groups.get(label)
        if sums is None:
            sums = groups[label] = [0, 0, 0, 0, 0, 0, 0, 0.0]
        sums[0] += 1
        if r.prompt_tokens:
            sums[1] += r.prompt_tokens
        if r.completion_tokens:
            sums[2] += r.completion_tokens
        if r.client_gone:
            sums[4] += 1
        if r.cost is not None:
            sums[5] += r.cost
            sums[6] += 1
        sums[7] += r.duration_ms
    rows: list[tuple[object, ...]] = []
    for label, sums in sorted(groups.items()):
        if int(label[6]) >= 400:  # (status)
            sums[3] = sums[0]
        sums[5] = saturated(sums[5])
        rows.append((*label, *sums))
    return rows


def _columns(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)  # ("user" is a keyword)


@cache
def daily_upsert_sql(numbered: bool) -> str:
    """Add a row of daily_rows() to its cube row, making it when it is not there yet."""
    names = (*DAILY_LABELS, *DAILY_SUMS)
    places = placeholders(numbered, len(names))
    return (
        f"INSERT INTO usage_daily ({_columns(names)}) VALUES ({places})"
        f" ON CONFLICT ({_columns(DAILY_LABELS)})"
        f" DO UPDATE SET {added_sql('usage_daily', DAILY_SUMS)}"
    )


@cache
def resum_sql(dialect: str) -> str:
    """Sum the records of [:start, :end) into the cube, for days that have no cube rows
    (after pruning has cut into one). The migration that made the cube sums the records
    there were the same way."""
    if dialect == "sqlite":
        day = f"CAST(ts / {DAY} AS INTEGER) * {DAY}"  # (truncates: ts is positive)
    else:
        day = f"CAST(floor(ts / {DAY}) AS BIGINT) * {DAY}"
    least = "MIN" if dialect == "sqlite" else "LEAST"  # (of two values)
    # summed in two parts, as values.cost_sum does: SQLite's SUM raises past 2^63
    cost = "COALESCE(SUM(cost / 1000000000), 0) * 1000000000 + COALESCE(SUM(cost % 1000000000), 0)"
    labels = (
        day, "key_id", '"user"', "key_name", "COALESCE(model, '')", "route", "status", "cached"
    )  # fmt: skip
    sums = (
        "COUNT(*)", "SUM(COALESCE(prompt_tokens, 0))", "SUM(COALESCE(completion_tokens, 0))",
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)", "SUM(client_gone)",
        f"{least}({cost}, {MAX_SUM_NANO})", "COUNT(cost)", "SUM(duration_ms)",
    )  # fmt: skip
    return (
        f"INSERT INTO usage_daily ({_columns((*DAILY_LABELS, *DAILY_SUMS))})"
        f" SELECT {', '.join(labels)}, {', '.join(sums)} FROM usage"
        f" WHERE ts >= :start AND ts < :end GROUP BY {', '.join(labels)}"
    )


def whole_days(
    since: float | None, until: float | None
) -> tuple[float | None, float | None] | None:
    """The whole UTC days of [since, until) that the cube answers for, as (start, end),
    None for an open side; None when the period holds no whole day. Like the hourly
    rollups the cube is exact at every moment, so an open end needs no records."""
    start = None if since is None else math.ceil(since / DAY) * DAY
    end = None if until is None else math.floor(until / DAY) * DAY
    if start is not None and end is not None and start >= end:
        return None
    return start, end
