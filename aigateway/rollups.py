"""Hourly rollups of the usage records: what the dashboard and the admin API read instead
of millions of rows.

For each hour, one row for all records, and one per user, key, model and route hold the
hour's counts and sums and two latency histograms (duration and time to first byte) of
BUCKETS buckets, each √2 wide. The store writes them in the same transaction as the records they
sum, so counts, tokens and cost read from them are exact (a journal replay writes neither
twice); percentiles read from them are estimates, within a bucket's width (±19%).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import UsageRecord

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
_T0 = SUM_COLUMNS.index("t00")


def bucket(ms: float) -> int:
    return bisect_right(BOUNDS, ms)


class Totals:
    """Counts, sums and histograms of some records, added up from rollup rows and
    records."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = [0] * len(SUM_COLUMNS)

    def add_record(self, record: UsageRecord) -> None:
        v = self.values
        v[0] += 1
        v[1] += record.prompt_tokens or 0
        v[2] += record.completion_tokens or 0
        v[3] += record.status >= 400
        v[4] += bool(record.client_gone)
        if record.cost is not None:
            v[5] += record.cost
            v[6] += 1
        v[7] += record.duration_ms
        v[_D0 + bucket(record.duration_ms)] += 1
        if record.ttfb_ms is not None:
            v[_T0 + bucket(record.ttfb_ms)] += 1

    def add_sums(self, sums: Sequence[float | None]) -> None:
        """Add a row of SUM_COLUMNS (a rollup row, or a SUM over rollup rows)."""
        v = self.values
        for i, value in enumerate(sums):
            if value:
                v[i] += value

    def add(self, other: Totals) -> None:
        self.add_sums(other.values)

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
            # micro-units; None when no record of the group has a cost yet
            "cost": int(v[5]) if v[6] else None,
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


def rollup_rows(records: Iterable[UsageRecord]) -> list[tuple[object, ...]]:
    """What `records` add to the rollups: rows of (dim, hour, value, user, key_name,
    *SUM_COLUMNS), sorted, so that two gateways adding to the same rows lock them in the
    same order."""
    by_group: dict[tuple[int, int, str | None, str], tuple[str, str, Totals]] = {}
    for record in records:
        hour = int(record.ts // HOUR) * HOUR
        group = (hour, record.key_id, record.model, record.route)
        found = by_group.get(group)
        if found is None:
            found = by_group[group] = (record.user, record.key_name, Totals())
        found[2].add_record(record)
    rows: dict[tuple[str, int, str], tuple[str | None, str | None, Totals]] = {}
    for (hour, key_id, model, route), (user, key_name, totals) in by_group.items():
        for dim, value, names in (
            ("all", "", (None, None)),
            ("user", user, (None, None)),
            ("key", str(key_id), (user, key_name)),
            ("model", model or "", (None, None)),  # (no model: counted under "")
            ("route", route, (None, None)),
        ):
            row = rows.get((dim, hour, value))
            if row is None:
                row = rows[(dim, hour, value)] = (*names, Totals())
            row[2].add(totals)
    return [
        (*where, user, key_name, *_whole(totals.values))
        for where, (user, key_name, totals) in sorted(rows.items())
    ]


def _whole(values: list[float]) -> list[float | int]:
    # duration_sum stays a float, every other sum is a count
    return [value if i == 7 else int(value) for i, value in enumerate(values)]


def upsert_sql(numbered: bool) -> str:
    """Add a row of rollup_rows() to its rollup row, making it when it is not there yet
    (SQLite and PostgreSQL speak the same ON CONFLICT)."""
    names = ("dim", "hour", "value", "user", "key_name", *SUM_COLUMNS)
    if numbered:
        places = ", ".join(f"${n}" for n in range(1, len(names) + 1))
    else:
        places = ", ".join("?" * len(names))
    columns = ", ".join(f'"{name}"' for name in names)
    added = ", ".join(f"{c} = usage_hourly.{c} + excluded.{c}" for c in SUM_COLUMNS)
    return (
        f"INSERT INTO usage_hourly ({columns}) VALUES ({places})"
        f" ON CONFLICT (dim, hour, value) DO UPDATE SET {added}"
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
