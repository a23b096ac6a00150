"""Hourly rollups of the usage records: what the dashboard and the admin API read instead
of millions of rows.

For each hour, one row for all records, and one per user, key, model, route and each
key's model (dim `key_model:ID`, so that one key's rows are one range of the primary key,
for its charts by model) hold the hour's counts and sums and two latency histograms
(duration and time to first byte) of BUCKETS buckets, each √2 wide. The store writes them
in the same transaction as the records they sum, so counts, tokens and cost read from them
are exact (a journal replay writes neither twice); percentiles read from them are
estimates, within a bucket's width (±19%).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from functools import cache, partial
from itertools import repeat
from operator import add, ge, is_not
from typing import TYPE_CHECKING, Any

from ..records import MAX_SUM_NANO, micro, saturated

if TYPE_CHECKING:
    from ..records import UsageRecord

HOUR = 3600
# Upper bounds (ms) of the latency buckets: bucket 0 holds what took under 1 ms, bucket i
# [2^((i-1)/2), 2^(i/2)) ms, and the last one everything from 2^21 ms (35 minutes) on.
BOUNDS = tuple(2 ** (i / 2) for i in range(43))
BUCKETS = len(BOUNDS) + 1
DURATION_COLUMNS = tuple(f"d{i:02d}" for i in range(BUCKETS))
TTFB_COLUMNS = tuple(f"t{i:02d}" for i in range(BUCKETS))
# Sums kept per row, in the order of Totals.values.
SUM_COLUMNS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone",
    "cost", "costed", "duration_sum",
    *DURATION_COLUMNS, *TTFB_COLUMNS,
)  # fmt: skip
_D0 = SUM_COLUMNS.index("d00")
COUNTED = _D0  # the sums before the latency buckets
_T0 = SUM_COLUMNS.index("t00")


def bucket(ms: float) -> int:
    return bisect_right(BOUNDS, ms)


class Totals:
    """Counts, sums and histograms of some records, added up from rollup rows and
    records."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = [0] * len(SUM_COLUMNS)

    def add_sums(self, sums: Sequence[float | None]) -> None:
        """Add a row of SUM_COLUMNS (a rollup row, or a SUM over rollup rows)."""
        v = self.values
        for i, value in enumerate(sums):
            if value:
                v[i] += value

    def add(self, other: Totals) -> None:
        self.add_sums(other.values)

    def subtract(self, other: Totals) -> None:
        """Take away the sums of records among these (the histograms too)."""
        v = self.values
        for i, value in enumerate(other.values):
            v[i] -= value

    def summary(
        self, exact: tuple[float | None, float | None, float | None, float | None] | None = None
    ) -> dict[str, object]:
        """The fields of a usage summary, as the store gives them for a group: p50 and p95
        of durations and times to first byte from the histograms, or `exact` ones."""
        v = self.values
        requests, prompt, completion = int(v[0]), int(v[1]), int(v[2])
        if exact is None:
            p50, p95 = percentiles(v[_D0 : _D0 + BUCKETS])
            ttfb_p50, ttfb_p95 = percentiles(v[_T0 : _T0 + BUCKETS])
        else:
            p50, p95, ttfb_p50, ttfb_p95 = exact
        return {
            "requests": requests,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "avg_ms": round(v[7] / requests, 2) if requests else 0.0,
            "p50_ms": p50,
            "p95_ms": p95,
            # time to first byte (of requests that had one)
            "ttfb_p50_ms": ttfb_p50,
            "ttfb_p95_ms": ttfb_p95,
            "errors": int(v[3]),
            # micro-units, rounded once from the nano-units summed; None when no record
            # of the group has a cost yet
            "cost": micro(saturated(v[5])) if v[6] else None,
            "client_gone": int(v[4]),
        }


def percentiles(counts: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p95 (nearest rank) of a histogram, each as its bucket's geometric middle."""
    total = int(sum(counts))
    if not total:
        return None, None
    return _rank(counts, min(total - 1, int(0.5 * total))), _rank(
        counts, min(total - 1, int(0.95 * total))
    )


def _rank(counts: Sequence[float], rank: int) -> float:
    seen = 0
    for i, count in enumerate(counts):
        seen += int(count)
        if seen > rank:
            return round(middle(i), 2)
    return round(middle(len(counts) - 1), 2)


def middle(i: int) -> float:
    if i == 0:
        return 0.5
    if i == BUCKETS - 1:
        return BOUNDS[-1]  # unbounded above: its lower bound
    return math.sqrt(BOUNDS[i - 1] * BOUNDS[i])


def rollup_rows(records: Sequence[UsageRecord]) -> list[tuple[object, ...]]:
    """What `records` add to the rollups: rows of (dim, hour, value, user, key_name,
    *SUM_COLUMNS), sorted, so that two gateways adding to the same rows lock them in the
    same order. Summed column by column, so that the loops run in C rather than a Python
    step per record: this runs in the event loop for every record the gateway writes."""
    if not records:
        return []
    groups = _groups(records)
    rows: dict[tuple[str, int, str], tuple[str | None, str | None, list[float]]] = {}
    for (hour, key_id, model, route), column in groups.items():
        sums = _sums(column)
        user, key_name = column["user"][0], column["key_name"][0]
        for dim, value, names in (
            ("all", "", (None, None)),
            ("user", user, (None, None)),
            ("key", str(key_id), (user, key_name)),
            ("model", model or "", (None, None)),  # (no model: counted under "")
            ("route", route, (None, None)),
            (key_model_dim(key_id), model or "", (user, key_name)),
        ):
            row = rows.get((dim, hour, value))
            if row is None:
                rows[(dim, hour, value)] = (*names, list(sums))
            else:
                row[2][:] = map(add, row[2], sums)
    return [
        (*where, user, key_name, *sums) for where, (user, key_name, sums) in sorted(rows.items())
    ]


def key_model_dim(key_id: int) -> str:
    """The rollup dimension of one key's usage per model (revision 0019)."""
    return f"key_model:{key_id}"


Columns = dict[str, Any]  # a field's name: its values, one per record


def _groups(records: Sequence[UsageRecord]) -> dict[tuple[int, int, str | None, str], Columns]:
    """The records of each (hour, key, model, route), in the order they first come, as
    columns."""
    column = _columns(records)
    ts = column["ts"]
    first, last = int(min(ts) // HOUR), int(max(ts) // HOUR)
    key_ids, models, routes = column["key_id"], column["model"], column["route"]
    if first == last and _one_value(key_ids) and _one_value(models) and _one_value(routes):
        return {(first * HOUR, key_ids[0], models[0], routes[0]): column}  # the usual batch
    grouped: dict[tuple[int, int, str | None, str], list[UsageRecord]] = {}
    for record in records:
        hour = int(record.ts // HOUR) * HOUR
        grouped.setdefault((hour, record.key_id, record.model, record.route), []).append(record)
    return {group: _columns(members) for group, members in grouped.items()}


def _one_value(values: tuple[object, ...]) -> bool:
    return values.count(values[0]) == len(values)


def _columns(records: Sequence[UsageRecord]) -> Columns:
    return dict(zip(records[0]._fields, zip(*records, strict=True), strict=True))


def _sums(column: Columns) -> list[float]:
    """SUM_COLUMNS of a group of records."""
    costs, durations = column["cost"], column["duration_ms"]
    sums: list[float] = [
        len(durations),
        sum(filter(None, column["prompt_tokens"])),
        sum(filter(None, column["completion_tokens"])),
        sum(map(ge, column["status"], repeat(400))),  # errors
        sum(map(bool, column["client_gone"])),
        saturated(sum(filter(None, costs))),  # (the column's sums stop there too)
        len(costs) - costs.count(None),  # costed
        sum(durations),
        *[0] * (2 * BUCKETS),
    ]
    for i, count in Counter(map(bisect_right, repeat(BOUNDS), durations)).items():
        sums[_D0 + i] = count
    ttfbs = filter(partial(is_not, None), column["ttfb_ms"])
    for i, count in Counter(map(bisect_right, repeat(BOUNDS), ttfbs)).items():
        sums[_T0 + i] = count
    return sums


def placeholders(numbered: bool, count: int) -> str:
    """`count` parameters of a row: `$1, $2...` (asyncpg) or `?, ?...` (SQLite)."""
    if numbered:
        return ", ".join(f"${n}" for n in range(1, count + 1))
    return ", ".join("?" * count)


@cache
def upsert_sql(numbered: bool) -> str:
    """Add a row of rollup_rows() to its rollup row, making it when it is not there yet
    (SQLite and PostgreSQL speak the same ON CONFLICT)."""
    names = ("dim", "hour", "value", "user", "key_name", *SUM_COLUMNS)
    places = placeholders(numbered, len(names))
    columns = ", ".join(f'"{name}"' for name in names)
    return (
        f"INSERT INTO usage_hourly ({columns}) VALUES ({places})"
        f" ON CONFLICT (dim, hour, value) DO UPDATE SET {added_sql('usage_hourly', SUM_COLUMNS)}"
    )


def added_sql(table: str, sums: Sequence[str]) -> str:
    """The SET of an upsert that adds a row's `sums` to the row there is: a cost stops at
    MAX_SUM_NANO rather than overflow a database integer."""
    return ", ".join(
        f"cost = CASE WHEN {table}.cost > {MAX_SUM_NANO} - excluded.cost THEN {MAX_SUM_NANO}"
        f" ELSE {table}.cost + excluded.cost END"
        if c == "cost"
        else f"{c} = {table}.{c} + excluded.{c}"
        for c in sums
    )


def whole_hours(
    since: float | None, until: float | None
) -> tuple[float | None, float | None] | None:
    """The whole hours of [since, until) that the rollups answer for, as (start, end), None
    for an open side; the rest (before start, from end on) is read from the records. None
    when the period holds no whole hour. The rollups are exact at every moment (written with
    the records), so an open end needs no records: the current hour's row is up to date."""
    start = None if since is None else math.ceil(since / HOUR) * HOUR
    end = None if until is None else math.floor(until / HOUR) * HOUR
    if start is not None and end is not None and start >= end:
        return None
    return start, end
