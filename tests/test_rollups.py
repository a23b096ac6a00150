"""The hourly rollups agree with the records they sum, on both databases: every count,
token and cost over any period and filter, percentiles within a bucket, after replays and pruning,
and when a migration makes them from records written before they existed."""

from __future__ import annotations

import importlib.util
import math
import random
import time
from pathlib import Path

from sqlalchemy import delete, select

from aigateway.db.rollups import HOUR
from aigateway.db.schema import usage_hourly
from aigateway.db.store import Store
from aigateway.records import UsageQuery, UsageRecord

ROOT = Path(__file__).resolve().parent.parent
MIGRATION = ROOT / "aigateway/db/migrations/versions/r0011_usage_hourly.py"
GROUPINGS = [(), ("user",), ("user", "key_name", "key_id"), ("model",), ("route",), ("key_id",)]
# Filters the rollups answer (each with a grouping of its own dimension) and those only
# the records can (a status; two dimensions at once).
FILTERS: list[dict[str, object]] = [
    {}, {"key_id": 2}, {"user": "alice"}, {"model": "llama3.2"}, {"route": "/api/chat"},
    {"status": 502}, {"user": "alice", "model": "qwen3:8b"},
    {"key_id": 1, "route": "/api/generate"},
]  # fmt: skip
# What the hourly rollups hold, a dimension's rows each: the fields they can filter and
# group by (only such a summary has percentiles).
HOURLY_DIMENSIONS = [set(), {"user"}, {"user", "key_name", "key_id"}, {"model"}, {"route"}]
EXACT_FIELDS = (
    "requests", "prompt_tokens", "completion_tokens", "total_tokens", "avg_ms", "errors",
    "cost", "client_gone",
)  # fmt: skip


def _records(rng: random.Random, now: float, count: int) -> list[UsageRecord]:
    """Records over the last three days (and a few stamped a little ahead, as another
    gateway's clock may): several keys, models (and none), routes, costs (and none)."""
    users = {1: ("alice", "laptop"), 2: ("alice", "phone"), 3: ("bob", "ci"), 4: ("carol", "x")}
    found = []
    for _ in range(count):
        key_id = rng.choice(list(users))
        user, name = users[key_id]
        found.append(
            UsageRecord(
                now - rng.random() * 3 * 86400 + rng.choice([0, 0, 0, 120]),
                key_id,
                user,
                name,
                "POST",
                rng.choice(["/api/chat", "/api/generate", "/v1/chat/completions"]),
                rng.choice(["llama3.2", "qwen3:8b", None]),
                rng.choice([200, 200, 200, 400, 502]),
                rng.choice([None, rng.randrange(1, 500)]),
                rng.randrange(0, 900),
                rng.lognormvariate(6, 1.5),
                rng.choice([None, rng.lognormvariate(4, 1)]),
                100,
                1000,
                rng.random() < 0.1,
                False,
                rng.choice([None, 0, rng.randrange(1, 10**6)]),
                None,
            )
        )
    return found


def _close(estimate: object, exact: object) -> bool:
    """A bucket's middle is within 2^(1/4) of every value in the bucket."""
    if exact is None or estimate is None:
        return estimate is exact
    assert isinstance(estimate, float) and isinstance(exact, float)
    if exact < 1:
        return estimate == 0.5
    return 2**-0.25 - 0.01 <= estimate / exact <= 2**0.25 + 0.01


async def test_rollups_answer_like_the_records_over_any_period(database: str) -> None:
    rng = random.Random(11)
    now = time.time()
    records = _records(rng, now, 3000)
    store = await Store.open(database)
    try:
        for n, start in enumerate(range(0, len(records), 700)):
            await store.insert_usage(records[start : start + 700], f"seg-{n}")
        await store.insert_usage(records[:700], "seg-0")  # a replay adds nothing
        hour = now // HOUR * HOUR
        periods = [
            (None, None),
            (now - 86400, None),
            (now - 7 * 86400, None),
            (hour - 5 * HOUR, hour - 2 * HOUR),  # whole hours only
            (now - 1000, now - 10),  # inside an hour or two: records only
            (hour - 30 * HOUR + 17, now - 4 * HOUR + 5),
            (None, now - 40 * HOUR),
            (hour - 50 * HOUR - 7, None),  # a whole day and more: the daily sums
        ] + [(now - rng.random() * 4 * 86400, now - rng.random() * 86400) for _ in range(9)]
        for since, until in periods:
            for group_by in GROUPINGS:
                for picked in FILTERS:
                    where = UsageQuery(since, until, **picked)  # type: ignore[arg-type]
                    rolled = await store.usage_summary(group_by, where)
                    # (whole days from the daily sums, for any filter)
                    counted = await store.usage_summary(group_by, where, percentiles=False)
                    exact = await store.usage_summary(group_by, where, exact=True)
                    summed = [{f: r[f] for f in (*group_by, *EXACT_FIELDS)} for r in exact]
                    for found in (rolled, counted):
                        assert [
                            {f: r[f] for f in (*group_by, *EXACT_FIELDS)} for r in found
                        ] == summed, where
                    named = {*group_by, *picked}
                    one_dimension = any(named <= dim for dim in HOURLY_DIMENSIONS)
                    for r, c, e in zip(rolled, counted, exact, strict=True):
                        for field in ("p50_ms", "p95_ms", "ttfb_p50_ms", "ttfb_p95_ms"):
                            assert c[field] is None, (where, field, c)
                            if one_dimension or not e["requests"]:
                                assert _close(r[field], e[field]), (where, field, r, e)
                            else:  # (no hourly histograms hold this filter)
                                assert r[field] is None, (where, field, r)
        assert sum(int(r["requests"]) for r in await store.usage_summary(("model",))) == 3000  # type: ignore[call-overload]
        for since in (now - 86400, now - 7 * 86400, now - 3 * HOUR - 1):
            for key_id in (None, 3):
                expected: dict[int, list[int]] = {}
                for record in records:
                    if record.ts >= since and key_id in (None, record.key_id):
                        sums = expected.setdefault(int(record.ts // HOUR * HOUR), [0] * 5)
                        sums[0] += 1
                        sums[1] += (record.prompt_tokens or 0) + record.completion_tokens  # type: ignore[operator]
                        sums[2] += record.cost or 0
                        sums[3] += record.status >= 400
                        sums[4] += record.client_gone
                fields = ("start", "requests", "tokens", "cost", "errors", "client_gone")
                series = await store.usage_series(since, HOUR, key_id)
                for sums in expected.values():
                    sums[2] = (sums[2] + 500) // 1000  # nano-units summed, shown in micro
                assert [[s[f] for f in fields] for s in series] == [
                    [start, *expected[start]] for start in sorted(expected)
                ]
    finally:
        await store.close()


async def test_pruning_keeps_rollups_and_records_in_step(database: str) -> None:
    now = time.time()
    records = _records(random.Random(3), now, 500)
    store = await Store.open(database)
    try:
        await store.insert_usage(records)
        before = now - 30 * HOUR - 600
        cutoff = before // HOUR * HOUR
        assert await store.prune_usage(before) == sum(r.ts < cutoff for r in records)
        rolled = await store.usage_summary(("key_id",))
        exact = await store.usage_summary(("key_id",), exact=True)
        assert [(r["requests"], r["cost"]) for r in rolled] == [
            (r["requests"], r["cost"]) for r in exact
        ]
        assert sum(int(r["requests"]) for r in rolled) == sum(r.ts >= cutoff for r in records)  # type: ignore[call-overload]
    finally:
        await store.close()


async def test_the_migration_sums_existing_records_as_the_writer_does(database: str) -> None:
    """Revision 0011 sums the records written before it: the same rows as the gateway's
    own writes (histogram buckets included)."""
    spec = importlib.util.spec_from_file_location("r0011", MIGRATION)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    rng = random.Random(5)
    records = _records(rng, time.time(), 2000)
    # values on and next to the buckets' bounds, where SQL and bisect could disagree
    edges = [2 ** (i / 2) for i in range(43)]
    records += [
        records[i]._replace(duration_ms=math.nextafter(b, b + d), ttfb_ms=b)
        for i, b in enumerate(edges)
        for d in (-1, 1)
    ]
    store = await Store.open(database)
    try:
        await store.insert_usage(records)
        order = (usage_hourly.c.dim, usage_hourly.c.hour, usage_hourly.c.value)
        async with store._engine.begin() as conn:
            # (its five dimensions: revision 0023 makes each key's per model)
            theirs_only = ~usage_hourly.c.dim.like("key_model:%")
            written = (
                await conn.execute(select(usage_hourly).where(theirs_only).order_by(*order))
            ).all()
            await conn.execute(delete(usage_hourly))
            await conn.run_sync(migration.backfill)
            made = (await conn.execute(select(usage_hourly).order_by(*order))).all()
        assert len(made) == len(written)
        for a, b in zip(made, written, strict=True):
            ours, theirs = a._asdict(), b._asdict()
            assert math.isclose(ours.pop("duration_sum"), theirs.pop("duration_sum"))
            assert ours == theirs
    finally:
        await store.close()
