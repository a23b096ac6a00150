"""The daily sums (usage_daily) agree with the records they sum, on both databases: after
a replay, after pruning cuts into a day, when revision 0024 makes them from the records of
an older database; pages of filtered records bounded by them lose nothing; budget spend
read from them is the records' spend. (Summaries over any period and filter are checked
against the records in test_rollups.py.)"""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway.db import reports, schema
from aigateway.db.daily import DAILY_LABELS, DAILY_SUMS, daily_rows
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.records import DAY, UsageQuery, UsageRecord
from tests.helpers import at_revision, usage_rows_at
from tests.test_rollups import EXACT_FIELDS, FILTERS, _records

EVERY_RECORD = UsageQuery()
GROUPINGS = [(), ("user",), ("model",), ("key_id",), ("route",)]


async def _cube(store: Store) -> list[tuple[object, ...]]:
    d = schema.usage_daily
    async with store._read() as conn:
        rows = (await conn.execute(select(d).order_by(*(d.c[n] for n in DAILY_LABELS)))).all()
    return [tuple(row) for row in rows]


def _summed(records: list[UsageRecord]) -> list[tuple[object, ...]]:
    """The cube rows the records make, as the writer sums them."""
    return [tuple(row) for row in daily_rows(records)]


async def _agrees(
    store: Store, where: UsageQuery = EVERY_RECORD, groupings: list[tuple[str, ...]] = GROUPINGS
) -> None:
    for group_by in groupings:
        counted = await store.usage_summary(group_by, where, percentiles=False)
        exact = await store.usage_summary(group_by, where, exact=True)
        assert [{f: r[f] for f in (*group_by, *EXACT_FIELDS)} for r in counted] == [
            {f: r[f] for f in (*group_by, *EXACT_FIELDS)} for r in exact
        ], (group_by, where)


async def test_a_replay_adds_nothing_and_the_rows_are_the_records_sums(database: str) -> None:
    now = time.time()
    records = _records(random.Random(21), now, 1200)
    store = await Store.open(database)
    try:
        await store.insert_usage(records[:600], "seg-a")
        await store.insert_usage(records[600:], "seg-b")
        await store.insert_usage(records[:600], "seg-a")  # a replay
        await store.insert_usage(records[600:], "seg-b")
        rows = await _cube(store)
        assert sum(int(row[len(DAILY_LABELS)]) for row in rows) == 1200  # type: ignore[call-overload]
        assert _merged(rows) == _merged(_summed(records))
        await _agrees(store)
    finally:
        await store.close()


def _merged(rows: list[tuple[object, ...]]) -> dict[tuple[object, ...], list[object]]:
    """Rows by their labels, durations rounded (summed in another order they may differ
    in the last bit)."""
    width = len(DAILY_LABELS)
    return {
        row[:width]: [*row[width:-1], round(float(row[-1]), 3)]  # type: ignore[arg-type]
        for row in rows
    }


async def test_pruning_into_a_day_sums_it_again_from_the_records_left(database: str) -> None:
    now = time.time()
    records = _records(random.Random(22), now, 1500)
    store = await Store.open(database)
    try:
        await store.insert_usage(records)
        day = now // DAY * DAY
        for before in (day - DAY + 5 * 3600 + 600, day - DAY + 9 * 3600):  # inside a day
            pruned = await store.prune_usage(before)
            cutoff = before // 3600 * 3600
            left = [r for r in records if r.ts >= cutoff]
            assert pruned == sum(r.ts < cutoff for r in records)
            records = left
            assert _merged(await _cube(store)) == _merged(_summed(left))
            await _agrees(store)
        assert await store.prune_usage(day) > 0  # (a day's start: whole days only)
        assert _merged(await _cube(store)) == _merged(_summed([r for r in records if r.ts >= day]))
    finally:
        await store.close()


@pytest.mark.parametrize("first_days", [7, 1])
async def test_pages_bounded_by_the_daily_sums_lose_nothing(
    database: str, first_days: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(With 1, the newest day first and then the rest: both reads of the days.)"""
    monkeypatch.setattr(reports, "_FIRST_DAYS", first_days)
    now = time.time()
    records = _records(random.Random(23), now, 1500)
    store = await Store.open(database)
    try:
        await store.insert_usage(records)
        periods = [(None, None), (now - 2 * DAY + 77, None), (now - 2.5 * DAY, now - 0.7 * DAY)]
        filters: list[dict[str, object]] = [*FILTERS, {"route": "/api/nothing"}, {"status": 400}]
        for since, until in periods:
            for picked in filters:
                where = UsageQuery(since, until, **picked)  # type: ignore[arg-type]
                matching = sorted(
                    (
                        r
                        for r in records
                        if (since is None or r.ts >= since)
                        and (until is None or r.ts < until)
                        and all(getattr(r, f) == v for f, v in picked.items())
                    ),
                    key=lambda r: r.ts,
                    reverse=True,
                )
                for limit, offset in ((50, 0), (30, 40), (500, 0), (10, len(matching) - 5)):
                    page = await store.usage_page(where, limit, max(0, offset))
                    expected = matching[max(0, offset) : max(0, offset) + limit]
                    assert [(r.ts, r.key_id) for _, r in page] == [
                        (r.ts, r.key_id) for r in expected
                    ], (where, limit, offset)
    finally:
        await store.close()


async def test_budget_spend_reads_whole_days_from_the_daily_sums(database: str) -> None:
    now = time.time()
    records = _records(random.Random(24), now, 1500)
    store = await Store.open(database)
    try:
        alice, _ = await store.create_key("alice", "laptop")
        await store.create_key("alice", "phone")
        bob, _ = await store.create_key("bob", "ci")
        user_id = (await store.get_user("alice")).id
        await store.insert_usage(records)
        for since in (now - 2.5 * DAY, now // DAY * DAY, now - 3 * 3600 - 7, 0.0):
            for owner, keys in (
                (f"key:{alice.id}", {alice.id}),
                (f"key:{bob.id}", {bob.id}),
                (f"user:{user_id}", {1, 2}),
            ):
                spent = sum(r.cost or 0 for r in records if r.key_id in keys and r.ts >= since)
                assert await store.spend_since(owner, since) == spent, (owner, since)
    finally:
        await store.close()


async def test_revision_0024_sums_the_records_of_an_older_database(database: str) -> None:
    """A database at revision 0023 with records opens with daily sums equal to what the
    writer would have made of them."""
    records = _records(random.Random(25), time.time(), 800)
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(23))
        async with engine.begin() as conn:
            await conn.execute(insert(schema.usage), usage_rows_at(23, records))
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        assert _merged(await _cube(store)) == _merged(_summed(records))
        # (filters no hourly rollup holds: these records were put in without them)
        for where in (UsageQuery(status=502), UsageQuery(user="alice", model="qwen3:8b")):
            await _agrees(store, where, [("key_id",), ("model",)])
    finally:
        await store.close()


def test_the_cube_sums_every_count_the_summaries_read() -> None:
    assert DAILY_SUMS == (
        "requests", "prompt_tokens", "completion_tokens", "errors", "client_gone", "cost",
        "costed", "duration_sum",
    )  # fmt: skip
