"""Reading usage back: rows, pages and export chunks of the records, series and grouped
summaries (whole hours from the hourly rollups where they can answer)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, and_, case, cast, func, null, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..records import (
    DAY,
    USAGE_COLUMNS,
    InvalidInputError,
    UsageQuery,
    UsageRecord,
    micro,
    saturated,
)
from .connection import Connector
from .daily import DAILY_SUMS, whole_days
from .rollups import BUCKETS, COUNTED, HOUR, SUM_COLUMNS, Totals, bucket, whole_hours
from .schema import usage, usage_daily, usage_hourly
from .values import TOKENS, cost_sum

USAGE_CHUNK = 500  # records an export reads, and writes, at a time
EVERY_RECORD = UsageQuery()


class ReportQueries(Connector):
    """Reads of the usage records and their rollups."""

    async def usage_rows(
        self,
        since: float | None = None,
        until: float | None = None,
        key_id: int | None = None,
        user: str | None = None,
    ) -> list[UsageRecord]:
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        where = UsageQuery(since, until, key_id, user)
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(*columns).where(*_usage_filter(where)).order_by(usage.c.ts, usage.c.id)
                )
            ).all()
        return [_usage_record(row) for row in rows]

    async def usage_page(
        self, where: UsageQuery, limit: int, offset: int = 0
    ) -> list[tuple[int, UsageRecord]]:
        """Records that match `where`, newest first, `limit` from `offset`, each with its
        id (for paging and reference)."""
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        async with self._read() as conn:
            oldest = await _oldest_day_needed(conn, where, offset + limit)
        if oldest is None:
            return []  # the daily sums know no record the filter picks
        if oldest > (where.since or 0):
            where = replace(where, since=oldest)
        statement = (
            select(usage.c.id, *columns)
            .where(*_usage_filter(where))
            .order_by(usage.c.ts.desc(), usage.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        return [(int(row[0]), _usage_record(row[1:])) for row in rows]

    async def usage_chunks(
        self,
        where: UsageQuery,
        *,
        newest_first: bool,
        most: int | None = None,
        chunk: int = USAGE_CHUNK,
    ) -> AsyncGenerator[list[UsageRecord], None]:
        """Records that match `where` (at most `most`), `chunk` at a time, each chunk its
        own short read: an export of any size holds one chunk in memory, and no read
        transaction stays open while the client takes its time. Pages are keyset pages
        on (ts, id), so a record written meanwhile neither shifts nor repeats a row."""
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        ts, rid = usage.c.ts, usage.c.id
        order = (ts.desc(), rid.desc()) if newest_first else (ts, rid)
        clauses = _usage_filter(where)
        after: tuple[float, int] | None = None
        left = most
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            statement = select(rid, *columns).where(*clauses)
            if after is not None:
                statement = statement.where(_past(after, newest_first))
            async with self._read() as conn:
                rows = (await conn.execute(statement.order_by(*order).limit(size))).all()
            if not rows:
                return
            after = (rows[-1][1], rows[-1][0])
            if left is not None:
                left -= len(rows)
            yield [_usage_record(row[1:]) for row in rows]
            if len(rows) < size:
                return

    async def usage_series(
        self, since: float, bucket_s: int, key_id: int | None = None
    ) -> list[dict[str, object]]:
        """Requests, tokens, cost, errors and early leaves per `bucket_s` seconds since
        `since` (buckets with no request are left out), oldest first. Hourly series read
        whole hours from the rollups."""
        hours = whole_hours(since, None) if bucket_s == HOUR else None
        dim = "all" if key_id is None else "key"
        where = UsageQuery(since=since, key_id=key_id)
        bucket = time_bucket(self.database.backend, bucket_s)
        raw = select(
            bucket,
            func.count(),
            func.sum(TOKENS),
            cost_sum(usage.c.cost),
            func.sum(case((usage.c.status >= 400, 1), else_=0)),
            func.sum(usage.c.client_gone),
        ).group_by(bucket)
        found: dict[int, list[int]] = {}
        async with self._read() as conn:
            if hours is None:
                parts = [raw.where(*_usage_filter(where))]
            else:
                h = usage_hourly.c
                rolled = (
                    select(
                        h.hour,
                        func.sum(h.requests),
                        func.sum(h.prompt_tokens + h.completion_tokens),
                        cost_sum(h.cost),
                        func.sum(h.errors),
                        func.sum(h.client_gone),
                    )
                    .where(*rollup_filter(dim, hours, where))
                    .group_by(h.hour)
                )
                edge = replace(where, until=hours[0])
                parts = [rolled, raw.where(*_usage_filter(edge))]
            for statement in parts:
                for row in (await conn.execute(statement)).all():
                    sums = found.setdefault(int(row[0]), [0] * 5)
                    for i, value in enumerate(row[1:]):
                        sums[i] += int(value or 0)
        for sums in found.values():
            sums[2] = micro(saturated(sums[2]))  # (cost: nano-units, shown in micro-units)
        return [
            dict(zip(("start", *_SERIES_FIELDS), (start, *found[start]), strict=True))
            for start in sorted(found)
        ]

    async def usage_summary(
        self,
        group_by: Sequence[str],
        where: UsageQuery = EVERY_RECORD,
        exact: bool = False,
        percentiles: bool = True,
    ) -> list[dict[str, object]]:
        """Requests, tokens and durations of the records that match `where`, grouped by any
        of user, key_name, key_id, model, route. With `exact` (the CLIs' reports) every
        record is read and percentiles are exact. Otherwise counts and sums are exact too,
        read from what sums them: whole hours from the hourly rollups when one of their
        dimensions holds every field the filter and the groups name (percentiles then
        estimated from their latency buckets), else whole UTC days from the daily sums
        (which hold any filter; no percentiles: None); the rest from the records. Without
        `percentiles` (None in each group) neither buckets nor durations are read: most of
        what a long period costs. (A filter on the response cache's mark, which only the
        daily sums hold, reads them.)"""
        allowed = {"user", "key_name", "key_id", "model", "route"}
        if not set(group_by) <= allowed:
            raise InvalidInputError(f"can group by {', '.join(sorted(allowed))}")
        backend = self.database.backend
        async with self._read() as conn:
            if exact:
                rows = await _raw_summary(conn, group_by, _usage_filter(where), backend)
                summary = [_exact_summary(group_by, row) for row in rows if row[-10]]
                return _sorted(summary, group_by)
            if where.cached is False:
                # What the upstreams answered is everything less what the cache did: two
                # summaries the sums answer at once, where the daily sums of nearly every
                # combination would be read. (No percentiles: they do not subtract.)
                groups = await _summed(conn, group_by, replace(where, cached=None), backend)
                hits = await _summed(conn, group_by, replace(where, cached=True), backend)
                # (A hit written between the two reads, which PostgreSQL's statements may
                # each see or not, takes at most its own request from its group.)
                for names, totals in hits.items():
                    groups.setdefault(names, Totals()).subtract(totals)
            else:
                groups = await _summed(conn, group_by, where, backend, percentiles)
        return _sorted(
            [
                {**dict(zip(group_by, names, strict=True)), **totals.summary()}
                for names, totals in groups.items()
                if totals.values[0] > 0
            ],
            group_by,
        )


Groups = dict[tuple[Any, ...], Totals]  # a summary's groups: their labels, their sums


async def _summed(
    conn: AsyncConnection,
    group_by: Sequence[str],
    where: UsageQuery,
    backend: str,
    percentiles: bool = False,
) -> Groups:
    """The groups of the records `where` picks, from what sums them (see usage_summary)."""
    dim = _rollup_dim(group_by, where)
    percentiles = percentiles and dim is not None
    # (one dimension's hourly rows are fewer than the cube's combinations a day)
    days = None if dim is not None else whole_days(where.since, where.until)
    if days is None:
        return await _hourly_summary(conn, group_by, where, dim, backend, percentiles)
    groups = await _daily_summary(conn, group_by, where, days)
    for since, until in ((where.since, days[0]), (days[1], where.until)):
        if None not in (since, until) and since != until:
            edge = replace(where, since=since, until=until)
            found = await _hourly_summary(conn, group_by, edge, dim, backend, False)
            for names, totals in found.items():
                groups.setdefault(names, Totals()).add(totals)
    return groups


async def _hourly_summary(
    conn: AsyncConnection,
    group_by: Sequence[str],
    where: UsageQuery,
    dim: str | None,
    backend: str,
    percentiles: bool,
) -> Groups:
    """The groups of the records `where` picks, whole hours from the hourly rollups of
    dimension `dim` (when there is one) and the rest from the records."""
    hours = None if dim is None else whole_hours(where.since, where.until)
    groups: Groups = {}
    edges: list[Sequence[Sequence[Any]]] = []
    if hours is None:
        clauses = _usage_filter(where)
        edges.append(await _raw_summary(conn, group_by, clauses, backend, percentiles))
    else:
        assert dim is not None
        start, end = hours
        # the records of the partial hours at either end
        for since, until in ((where.since, start), (end, where.until)):
            if None not in (since, until) and since != until:
                edge = _usage_filter(replace(where, since=since, until=until))
                edges.append(await _raw_summary(conn, group_by, edge, backend, percentiles))
        h = usage_hourly.c
        labels = [_ROLLUP_LABELS[dim][name] for name in group_by]
        wanted = SUM_COLUMNS if percentiles else SUM_COLUMNS[:COUNTED]
        sums = (cost_sum(h[c]) if c == "cost" else func.sum(h[c]) for c in wanted)
        statement = select(*labels, *sums).where(*rollup_filter(dim, hours, where))
        if labels:
            statement = statement.group_by(*labels)
        for summed in (await conn.execute(statement)).all():
            names = _rollup_names(dim, group_by, summed[: len(group_by)])
            groups.setdefault(names, Totals()).add_sums(summed[len(group_by) :])
    for rows in edges:
        for row in rows:
            names = tuple(row[: len(group_by)])
            groups.setdefault(names, Totals()).add_sums(_raw_sums(row[len(group_by) :]))
    return groups


async def _daily_summary(
    conn: AsyncConnection,
    group_by: Sequence[str],
    where: UsageQuery,
    days: tuple[float | None, float | None],
) -> Groups:
    """The groups of the records `where` picks in the whole days `days`, from the daily
    sums (counts and sums only)."""
    d = usage_daily.c
    labels = [d[name] for name in group_by]
    clauses = [d[name] == value for name, value in _picked(where).items()]
    start, end = days
    if start is not None:
        clauses.append(d.day >= start)
    if end is not None:
        clauses.append(d.day < end)
    sums = (cost_sum(d[c]) if c == "cost" else func.sum(d[c]) for c in DAILY_SUMS)
    statement = select(*labels, *sums).where(*clauses)
    if labels:
        statement = statement.group_by(*labels)
    groups: Groups = {}
    for summed in (await conn.execute(statement)).all():
        names = tuple(
            None if name == "model" and value == "" else value  # ("": no model)
            for name, value in zip(group_by, summed[: len(group_by)], strict=True)
        )
        groups.setdefault(names, Totals()).add_sums(summed[len(group_by) :])
    return groups


async def _oldest_day_needed(conn: AsyncConnection, where: UsageQuery, most: int) -> float | None:
    """The start of the oldest day a page of the `most` newest records `where` picks may
    reach back to (0: any), from the daily sums; None when they hold none of them. A
    filter the ts index cannot serve (a model or route no record has, or a rare status)
    then reads the days that hold its records, not all history backwards."""
    picked = _picked(where)
    if not picked or set(picked) == {"key_id"}:  # (an index serves these)
        return 0
    d = usage_daily.c
    clauses = [d[name] == value for name, value in picked.items()]
    if where.since is not None:
        clauses.append(d.day >= where.since // DAY * DAY)
    if where.until is not None:
        clauses.append(d.day < where.until)
    per_day = select(d.day, func.sum(d.requests)).group_by(d.day).order_by(d.day.desc())
    seen, found, last = 0, False, None
    # the newest few days first (the days' index in order, stopping there): a page
    # is most often in them; then the rest
    for statement in (per_day.where(*clauses).limit(_FIRST_DAYS), per_day):
        if last is not None:
            statement = statement.where(*clauses, d.day < last)
        rows = (await conn.execute(statement)).all()
        for day, requests in rows:
            found, last = True, day
            if where.until is None or day + DAY <= where.until:  # (a day cut by `until`:
                seen += requests  # maybe none of its records is in the period)
            if seen >= most:
                return float(day)
        if len(rows) < _FIRST_DAYS:
            break
    return 0 if found else None


_FIRST_DAYS = 7


def time_bucket(backend: str, seconds: int) -> Any:
    """The start of the `seconds`-long bucket (aligned on the epoch, so on UTC days) that
    a usage record's time falls in."""
    if backend == "sqlite":
        index = cast(usage.c.ts / seconds, Integer)  # truncates: ts is positive
    else:
        index = cast(func.floor(usage.c.ts / seconds), BigInteger)
    return index * seconds


# The fields of a UsageQuery that pick records by value (besides their time), each a
# column of the records and of the daily sums (the hourly sums hold some of them).
_PICKED = ("key_id", "user", "model", "route", "status", "cached")


def _picked(where: UsageQuery) -> dict[str, object]:
    """The fields `where` picks records by, with their values as the columns hold them
    (the cached mark as 0 or 1)."""
    picked: dict[str, object] = {}
    for name in _PICKED:
        value = getattr(where, name)
        if value is not None:
            picked[name] = int(value) if isinstance(value, bool) else value
    return picked


def _usage_filter(where: UsageQuery) -> list[Any]:
    """The one translation of a UsageQuery into conditions on the records."""
    clauses = [usage.c[name] == value for name, value in _picked(where).items()]
    if where.since is not None:
        clauses.append(usage.c.ts >= where.since)
    if where.until is not None:
        clauses.append(usage.c.ts < where.until)
    return clauses


def _past(after: tuple[float, int], newest_first: bool) -> Any:
    """Rows beyond (ts, id) `after` in the export's order. Written as a range on ts and
    then the tie on id, which both databases serve from the ts index."""
    ts, rid = after
    if newest_first:
        return and_(usage.c.ts <= ts, or_(usage.c.ts < ts, usage.c.id < rid))
    return and_(usage.c.ts >= ts, or_(usage.c.ts > ts, usage.c.id > rid))


def _usage_record(row: Sequence[Any]) -> UsageRecord:
    """A usage row as a record, for display. Durations are stored as measured and rounded
    to the microsecond when read back, so the request path does not pay for round(); the
    cost is shown in micro-units (rounded half up from its nano-units)."""
    record = UsageRecord(*row)
    return record._replace(
        cost=None if record.cost is None else micro(record.cost),
        duration_ms=round(record.duration_ms, 3),
        ttfb_ms=None if record.ttfb_ms is None else round(record.ttfb_ms, 3),
        client_gone=bool(record.client_gone),
        estimated=bool(record.estimated),
        cached=bool(record.cached),
    )


_SERIES_FIELDS = ("requests", "tokens", "cost", "errors", "client_gone")


async def _raw_summary(
    conn: AsyncConnection,
    group_by: Sequence[str],
    clauses: list[Any],
    backend: str,
    percentiles: bool = True,
) -> Sequence[Sequence[Any]]:
    """Usage records summed per group, read from the records: the labels, then requests,
    prompt and completion tokens, duration sum, errors, early leaves, cost, records with a
    cost, and the durations and times to first byte joined by commas (for percentiles)."""
    labels = [usage.c[name] for name in group_by]
    durations: Any
    ttfbs: Any
    if not percentiles:
        durations = ttfbs = null()
    elif backend == "sqlite":
        durations = func.group_concat(usage.c.duration_ms)
        ttfbs = func.group_concat(usage.c.ttfb_ms)  # (NULLs are left out)
    else:
        durations = func.string_agg(cast(usage.c.duration_ms, Text), ",")
        ttfbs = func.string_agg(cast(usage.c.ttfb_ms, Text), ",")
    statement = select(
        *labels,
        func.count(),
        func.sum(func.coalesce(usage.c.prompt_tokens, 0)),
        func.sum(func.coalesce(usage.c.completion_tokens, 0)),
        func.sum(usage.c.duration_ms),
        func.sum(case((usage.c.status >= 400, 1), else_=0)),
        func.sum(usage.c.client_gone),
        cost_sum(usage.c.cost),
        func.count(usage.c.cost),
        durations,
        ttfbs,
    ).where(*clauses)
    if labels:
        statement = statement.group_by(*labels)
    return (await conn.execute(statement)).all()


def _exact_summary(group_by: Sequence[str], row: Sequence[Any]) -> dict[str, object]:
    """A group of _raw_summary as a summary, with percentiles of every duration (not of
    latency buckets)."""
    measures = row[len(group_by) :]
    totals = Totals()
    totals.add_sums(_counted_sums(measures))
    joined, ttfb = measures[-2:]
    return {
        **dict(zip(group_by, row[: len(group_by)], strict=True)),
        **totals.summary((*_percentiles(joined), *_percentiles(ttfb))),
    }


def _counted_sums(measures: Sequence[Any]) -> list[float]:
    """The sums of a _raw_summary group, in SUM_COLUMNS' order, up to the histograms."""
    count, prompt, completion, duration, errors, gone, cost, costed, _, _ = measures
    return [
        count, prompt or 0, completion or 0, errors or 0, gone or 0, cost or 0, costed,
        duration or 0.0,
    ]  # fmt: skip


def _raw_sums(measures: Sequence[Any]) -> list[float]:
    """The measures of a _raw_summary group as a row of SUM_COLUMNS: the joined durations
    counted into latency buckets."""
    joined, ttfb = measures[-2:]
    sums = _counted_sums(measures)
    for values in (joined, ttfb):
        buckets = [0] * BUCKETS
        for value in values.split(",") if values else ():
            buckets[bucket(float(value))] += 1
        sums.extend(buckets)
    return sums


def _rollup_dim(group_by: Sequence[str], where: UsageQuery) -> str | None:
    """The rollup rows that can answer a summary, if any: the first dimension whose rows
    hold every field the groups name and the filter picks by (none holds a status)."""
    named = set(group_by) | set(_picked(where))
    for dim, labels in _ROLLUP_LABELS.items():
        if named <= set(labels):
            return dim
    return None


_ROLLUP_LABELS = {
    "all": {},
    "user": {"user": usage_hourly.c.value},
    "key": {
        "user": usage_hourly.c.user,
        "key_name": usage_hourly.c.key_name,
        "key_id": usage_hourly.c.value,
    },
    "model": {"model": usage_hourly.c.value},
    "route": {"route": usage_hourly.c.value},
}


def rollup_filter(
    dim: str, hours: tuple[float | None, float | None], where: UsageQuery
) -> list[Any]:
    """The rollup rows of dimension `dim` in `hours` that hold the records `where` picks
    (a key's rows name its user; a user's, model's or route's rows are that value)."""
    h = usage_hourly.c
    start, end = hours
    clauses = [h.dim == dim]
    if start is not None:
        clauses.append(h.hour >= start)
    if end is not None:
        clauses.append(h.hour < end)
    for name, value in _picked(where).items():
        clauses.append(_ROLLUP_LABELS[dim][name] == str(value))
    return clauses


def _rollup_names(dim: str, group_by: Sequence[str], values: Sequence[Any]) -> tuple[Any, ...]:
    """A rollup group's labels as the records have them: key ids are numbers, and the
    model "" is a record without one."""
    names = []
    for name, value in zip(group_by, values, strict=True):
        if name == "key_id":
            value = int(value)
        elif name == "model" and value == "":
            value = None
        names.append(value)
    return tuple(names)


def _sorted(summary: list[dict[str, object]], group_by: Sequence[str]) -> list[dict[str, object]]:
    """Groups in the order of their labels, a missing one (a record without a model) last,
    the same on both databases."""

    def order(row: dict[str, object]) -> list[tuple[bool, Any]]:
        return [(row[n] is None, 0 if row[n] is None else row[n]) for n in group_by]

    return sorted(summary, key=order)


def _percentiles(joined: str | None) -> tuple[float | None, float | None]:
    """p50 and p95 of comma-joined values (nearest rank), the same way on both databases."""
    if not joined:
        return None, None
    ordered = sorted(float(d) for d in joined.split(","))
    last = len(ordered) - 1
    return (
        round(ordered[min(last, int(0.5 * len(ordered)))], 2),
        round(ordered[min(last, int(0.95 * len(ordered)))], 2),
    )
