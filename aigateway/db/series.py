"""Usage over time for the dashboard's charts: requests, tokens, cost, errors and early
leaves per hour or per UTC day, in total or split by model or user (the top few, the rest
as one "other"), of the gateway or one key, read from the hourly rollups (a day sums its
hours in SQL): never the records themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, func, literal, select

from ..records import UsageQuery, micro, saturated
from .connection import Connector
from .reports import rollup_filter
from .rollups import HOUR, key_model_dim
from .schema import usage_hourly
from .values import cost_sum

Split = Literal["total", "model", "user"]
MEASURES = ("requests", "tokens", "cost", "errors", "client_gone")


@dataclass(frozen=True)
class ChartGroup:
    """One line of a chart: a model or user (None: the total, or every group beyond the
    top ones when `other`), and each measure per bucket, oldest first."""

    name: str | None
    other: bool
    sums: dict[str, list[int]]

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "other": self.other, **self.sums}


class SeriesQueries(Connector):
    """Usage per bucket for charts."""

    async def usage_chart(
        self,
        since: int,
        bucket_s: int,
        buckets: int,
        split: Split = "total",
        key_id: int | None = None,
        top: int = 5,
    ) -> list[ChartGroup]:
        """`buckets` buckets of `bucket_s` seconds (an hour or a whole number of hours)
        from `since` (a bucket's start) on: every key's, or key `key_id`'s. Split by model
        or user, the `top` groups with the most requests in the period come first, then
        "other" (the rest summed) if there is a rest. Groups with no request are left out."""
        if since % HOUR or bucket_s % HOUR:
            raise ValueError("charts read whole hours")  # (a caller's mistake, not input)
        if key_id is not None and split == "user":
            raise ValueError("a key's usage has one user")
        until = since + buckets * bucket_s
        h = usage_hourly.c
        start = h.hour if bucket_s == HOUR else h.hour - h.hour % bucket_s
        if split == "model" and key_id is not None:
            dim, key_id = key_model_dim(key_id), None  # (the key is in the dimension)
        elif split == "total":
            dim = "all" if key_id is None else "key"
        else:
            dim = split
        label = h.value
        where = rollup_filter(dim, (since, until), UsageQuery(key_id=key_id))
        values = [
            h.requests,
            h.prompt_tokens + h.completion_tokens,
            h.cost,
            h.errors,
            h.client_gone,
        ]
        async with self._read() as conn:
            names: list[str] = []
            if split != "total":
                requests = func.sum(values[0])
                ranked = select(label).where(*where).group_by(label)
                ranked = ranked.order_by(requests.desc(), label).limit(top)
                names = [row[0] for row in (await conn.execute(ranked)).all()]
            statement = _per_bucket(start, label, names, values, where)
            rows = (await conn.execute(statement)).all()
        return _groups(rows, names, split, since, bucket_s, buckets)


def _per_bucket(
    start: Any, label: Any, names: list[str], values: Sequence[Any], where: Sequence[Any]
) -> Any:
    """The measures summed per bucket: of each of the top `names` apart and of the rest
    as one (all of them as one when `names` is empty: the total). The rows are labelled
    in a subquery and summed outside it, so that each label is one column to group by
    (PostgreSQL does not see two spellings of an expression with parameters as one)."""
    top: Any
    group: Any
    if names:
        top = case((label.in_(names), 1), else_=0)
        group = case((label.in_(names), label), else_=literal(""))
    else:
        top, group = literal(0), literal("")
    columns = [f"v{i}" for i in range(len(values))]
    rows = (
        select(
            start.label("start"),
            top.label("top"),
            group.label("name"),
            *(value.label(name) for value, name in zip(values, columns, strict=True)),
        )
        .where(*where)
        .subquery()
    )
    sums = [
        cost_sum(rows.c[name]) if i == 2 else func.sum(rows.c[name])
        for i, name in enumerate(columns)
    ]
    keys = (rows.c.start, rows.c.top, rows.c.name)
    return select(*keys, *sums).group_by(*keys)


def _groups(
    rows: Sequence[Any],
    names: list[str],
    split: Split,
    since: int,
    bucket_s: int,
    buckets: int,
) -> list[ChartGroup]:
    """Rows of (bucket start, is top, name, *measures) as groups of full-length lists:
    the top ones in `names`' order (most requests first), then the rest."""
    sums: dict[tuple[bool, str], list[list[int]]] = {}
    for start, top, name, *values in rows:
        i = (int(start) - since) // bucket_s
        if not 0 <= i < buckets:
            continue
        key = (bool(top), name if top else "")
        lists = sums.setdefault(key, [[0] * buckets for _ in MEASURES])
        for column, value in zip(lists, values, strict=True):
            column[i] += int(value or 0)
    groups = []
    for top, name in [(True, name) for name in names] + [(False, "")]:
        found = sums.get((top, name))
        if found is None or not any(found[0]):
            continue
        found[2] = [micro(saturated(nano)) for nano in found[2]]  # cost: nano- to micro-units
        groups.append(
            ChartGroup(
                name=name if top else None,
                other=split != "total" and not top,
                sums=dict(zip(MEASURES, found, strict=True)),
            )
        )
    return groups
