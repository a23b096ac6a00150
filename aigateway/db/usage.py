"""Writing usage records: a batch in one transaction, exactly once per journal segment,
with its hourly rollups and (PostgreSQL) the shared counts; the sums that quotas and
budgets read back; pruning."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..records import (
    DAY,
    MAX_INT,
    MAX_SUM_NANO,
    USAGE_COLUMNS,
    LocalUsageRecord,
    UsageRecord,
    saturated,
)
from .connection import DRIVER_REFUSALS, Connector, driver_connection, first_line
from .daily import daily_rows, daily_upsert_sql, resum_sql
from .rollups import HOUR, rollup_rows, upsert_sql
from .schema import keys, refusals_hourly, usage, usage_daily, usage_hourly, usage_segments
from .values import TOKENS, cost_sum


class UsageRejected(Exception):
    """The database refused a batch of usage records for a value in one of them (not
    because it is busy or away): retrying the same batch cannot help."""


class UsageQueries(Connector):
    """Writes of the usage records, and the sums limits read."""

    async def spend_since(self, owner: str, since: float) -> int:
        """What a budget's owner (`key:ID` or `user:ID`) has spent since `since`, by the
        usage records written so far."""
        kind, _, number = owner.partition(":")
        owner_id = int(number)
        if kind == "key":
            key_ids: object = owner_id
        else:
            key_ids = select(keys.c.id).where(keys.c.user_id == owner_id).scalar_subquery()
        # whole days from the daily sums, the hours before the first from the records
        first_day = -(-since // DAY) * DAY
        d = usage_daily.c
        days = select(cost_sum(d.cost)).where(_one_of(d.key_id, key_ids), d.day >= first_day)
        before = select(cost_sum(usage.c.cost)).where(
            _one_of(usage.c.key_id, key_ids), usage.c.ts >= since, usage.c.ts < first_day
        )
        async with self._read() as conn:
            spent = [(await conn.execute(part)).scalar() for part in (days, before)]
        return saturated(sum(part or 0 for part in spent))

    async def insert_usage(
        self, records: Sequence[UsageRecord], segment: str | None = None
    ) -> None:
        """Insert a batch in one transaction, with the name of the journal segment it
        comes from; a segment written before is not written again (exactly once). A value
        the database refuses raises UsageRejected: retrying the same batch cannot help."""
        if not records and segment is None:
            return
        async with self._write() as conn:
            try:
                if segment is not None and not await _claim_segment(conn, segment):
                    return  # written before (a replay): exactly once
                await _insert_usage_rows(conn, records)
                await _add_to_rollups(conn, records)
                if conn.dialect.name == "postgresql":
                    await _share_counts(conn, records)
            except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
                raise UsageRejected(first_line(exc.orig)) from None
            except sa_exc.StatementError as exc:
                if isinstance(exc, sa_exc.DBAPIError):
                    raise  # the database is busy or away: the batch waits, not rejected
                raise UsageRejected(first_line(exc.orig or exc)) from None  # not bindable
            except DRIVER_REFUSALS as exc:
                raise UsageRejected(first_line(exc)) from None

    async def segment_written(self, segment: str) -> bool:
        """Whether the journal segment `segment` is in the database already."""
        async with self._read() as conn:
            return await _segment_exists(conn, segment)

    async def forget_segments(self, before: float) -> None:
        """Drop the names of segments written before `before` (their files are gone)."""
        async with self._write() as conn:
            await conn.execute(delete(usage_segments).where(usage_segments.c.written_at < before))

    async def tokens_since(self, since: float) -> dict[int, int]:
        """Prompt + completion tokens per key id since `since` (for daily quotas)."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(usage.c.key_id, func.sum(TOKENS))
                    .where(usage.c.ts >= since)
                    .group_by(usage.c.key_id)
                )
            ).all()
        return {int(row[0]): int(row[1] or 0) for row in rows}

    async def prune_usage(self, before: float) -> int:
        """Delete the records, and the rollup and refusal rows, of the hours before the one `before`
        falls in (whole hours, so that the rollups keep summing the records there are). The
        daily sums of the day the cut falls in are summed again from the records left."""
        cutoff = before // HOUR * HOUR
        first_day = cutoff // DAY * DAY
        async with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # A writer adding to the cut day waits (or is waited for): its records
                # are then either summed here or added by it, never both or neither.
                await conn.execute(text("LOCK TABLE usage_daily IN SHARE ROW EXCLUSIVE MODE"))
            result = await conn.execute(delete(usage).where(usage.c.ts < cutoff))
            await conn.execute(delete(usage_hourly).where(usage_hourly.c.hour < cutoff))
            await conn.execute(delete(refusals_hourly).where(refusals_hourly.c.hour < cutoff))
            cut = first_day if cutoff == first_day else first_day + DAY
            await conn.execute(delete(usage_daily).where(usage_daily.c.day < cut))
            if cut != first_day:
                await conn.execute(
                    text(resum_sql(conn.dialect.name)), {"start": cutoff, "end": cut}
                )
            return result.rowcount


def _one_of(column: Any, key_ids: Any) -> Any:
    """`column` is the key id `key_ids` (a number), or one of them (a subquery)."""
    return column == key_ids if isinstance(key_ids, int) else column.in_(key_ids)


# Rows per INSERT statement: 1,600 parameters, well inside SQLite's limit of 32,766 and
# PostgreSQL's of 65,535.
ROWS_PER_INSERT = 100

# sqlite3 binds an exact int at once, but for a bool (a subclass of int) it first looks
# for an adapter, through two failing attribute lookups that cost more than the rest of a
# usage row (which holds two bools). With this it stores the same integer, directly.
sqlite3.register_adapter(bool, int)


@functools.lru_cache(maxsize=2 * ROWS_PER_INSERT)
def _insert_usage_sql(rows: int, numbered: bool) -> str:
    """INSERT of `rows` usage records; placeholders `?` (SQLite) or `$1, $2...` (asyncpg)."""
    width = len(USAGE_COLUMNS)
    if numbered:
        values = ", ".join(
            "(" + ", ".join(f"${row * width + n}" for n in range(1, width + 1)) + ")"
            for row in range(rows)
        )
    else:
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)
    columns = ", ".join(f'"{name}"' for name in USAGE_COLUMNS)  # "user" is a keyword
    return f"INSERT INTO usage ({columns}) VALUES {values}"


async def _insert_usage_rows(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Statements of ROWS_PER_INSERT rows, the records passed as they are, on the driver's
    own connection inside the transaction. Through SQLAlchemy (even exec_driver_sql) the
    same statements cost twice the CPU (8 against 4 ms for 750 rows, measured), most of it
    while the event loop waits for the GIL; built with insert(usage) SQLAlchemy also
    processed every value in Python. Not a step per row either, which traded the GIL with
    the event loop for each one."""
    driver = await driver_connection(conn)
    numbered = conn.dialect.paramstyle.startswith("numeric")  # asyncpg: $1, $2...
    for start in range(0, len(records), ROWS_PER_INSERT):
        rows = records[start : start + ROWS_PER_INSERT]
        values: list[object] = []
        for row in rows:  # (a row's values copied in C; chain() stepped through each)
            values += row
        sql = _insert_usage_sql(len(rows), numbered)
        if numbered:
            await driver.execute(sql, *values)
        else:
            await driver.execute(sql, values)


async def _add_to_rollups(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Add the records to their hourly rollup rows and their daily sums, in the
    transaction that writes them."""
    rows = rollup_rows(records)
    if not rows:
        return
    driver = await driver_connection(conn)
    numbered = conn.dialect.paramstyle.startswith("numeric")
    await driver.executemany(upsert_sql(numbered), rows)
    await driver.executemany(daily_upsert_sql(numbered), daily_rows(records))


# Tokens of records decided locally (LocalUsageRecord) onto their keys' day counts, one
# row per key ($1 keys in ascending order, $2 the latest day of each key's records, $3
# that day's tokens): a newer day starts the row's day, an older one is past.
_SHARE_TOKENS = f"""
INSERT INTO limit_counters AS l (key_id, minute_start, minute_used, hour_start, hour_used,
    day_start, day_tokens, day_reserved, in_flight)
SELECT r.k, 0, 0, 0, 0, r.d, r.t, 0, 0
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS r(k, d, t) ORDER BY r.k
ON CONFLICT (key_id) DO UPDATE SET
    day_tokens = CASE WHEN excluded.day_start > l.day_start THEN excluded.day_tokens
        WHEN excluded.day_start = l.day_start THEN least(l.day_tokens + excluded.day_tokens,
            {MAX_INT})
        ELSE l.day_tokens END,
    day_start = greatest(l.day_start, excluded.day_start)
"""
# Their costs onto the budgets they count against (the key's and its user's), those of
# the row's period only ($1 keys, $2 times, $3 costs); the rows locked first, in the order
# every function of the schema locks them. A budget with no row yet is made from the
# usage table, which holds them already.
_SHARE_COSTS = f"""
WITH r AS (SELECT * FROM unnest($1::bigint[], $2::float8[], $3::bigint[]) AS r(k, ts, c)),
o AS (
    SELECT 'key:' || r.k AS owner, r.ts, r.c FROM r
    UNION ALL
    SELECT 'user:' || keys.user_id, r.ts, r.c FROM r JOIN keys ON keys.id = r.k
    WHERE keys.user_id IS NOT NULL
),
locked AS (
    SELECT b.owner, b.period_start FROM budget_spend AS b
    WHERE b.owner IN (SELECT owner FROM o) ORDER BY b.owner COLLATE "C" FOR UPDATE
),
s AS (
    SELECT locked.owner, sum(o.c) AS cost FROM o JOIN locked
        ON locked.owner = o.owner AND o.ts >= locked.period_start
    GROUP BY locked.owner
)
UPDATE budget_spend AS b SET spent = least(b.spent + s.cost, {MAX_SUM_NANO})
FROM s WHERE b.owner = s.owner
"""


async def _share_counts(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Bring the tokens and costs of records decided on a gateway's own reckoning to the
    shared rows, in the transaction that inserts them: once, however often replayed."""
    local = [r for r in records if r.__class__ is LocalUsageRecord]
    if not local:
        return
    days: dict[int, tuple[int, int]] = {}  # key -> (its latest day, that day's tokens)
    for r in local:
        tokens = (r.prompt_tokens or 0) + (r.completion_tokens or 0)
        day = int(r.ts // DAY * DAY)
        latest = days.get(r.key_id)
        if latest is None or day > latest[0]:
            days[r.key_id] = (day, tokens)
        elif day == latest[0]:
            days[r.key_id] = (day, latest[1] + tokens)
    driver = await driver_connection(conn)
    key_ids = sorted(days)
    await driver.execute(
        _SHARE_TOKENS,
        key_ids,
        [days[k][0] for k in key_ids],
        [days[k][1] for k in key_ids],
    )
    costly = [r for r in local if r.cost]
    if costly:
        await driver.execute(
            _SHARE_COSTS,
            [r.key_id for r in costly],
            [r.ts for r in costly],
            [r.cost for r in costly],
        )


async def _claim_segment(conn: AsyncConnection, segment: str) -> bool:
    """Note in the transaction that `segment`'s records are written; False when they
    were before. One statement (a look and an insert were two; this runs at every
    flush): on SQLite on the driver's connection, as for the records, since through
    SQLAlchemy each statement is three calls into aiosqlite's thread; on PostgreSQL
    through SQLAlchemy, whose first statement is what begins the transaction there."""
    if conn.dialect.name == "sqlite":
        driver = await driver_connection(conn)
        cursor = await driver.execute(
            "INSERT INTO usage_segments (name, written_at) VALUES (?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (segment, time.time()),
        )
        return bool(cursor.rowcount == 1)
    claim = pg_insert(usage_segments).values(name=segment, written_at=time.time())
    result = await conn.execute(claim.on_conflict_do_nothing())
    return bool(result.rowcount == 1)


async def _segment_exists(conn: AsyncConnection, segment: str) -> bool:
    found = await conn.execute(
        select(usage_segments.c.name).where(usage_segments.c.name == segment)
    )
    return found.first() is not None
