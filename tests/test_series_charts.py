"""The charts' series (/admin/series?range=...) agree with the records they sum, on both
databases: per hour over 24 hours and 7 days, per UTC day over 30 days, in total and
split by model or user (the top few, the rest as "other"), for the gateway and for one
key; and the API lets each key see only what it may, refusing bad input with a 400."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway.db.rollups import HOUR
from aigateway.db.schema import usage, usage_hourly
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.records import DAY, UsageRecord
from aigateway.relay.state import RELAY

from .conftest import GatewayClient
from .helpers import at_revision, usage_rows_at
from .test_rollups import _records

MEASURES = ("requests", "tokens", "cost", "errors", "client_gone")


def _expected(
    records: list[UsageRecord],
    since: int,
    bucket_s: int,
    buckets: int,
    split: str,
    key_id: int | None,
    top: int,
) -> list[dict[str, Any]]:
    """The groups as the API should give them, summed here from the records alone."""

    def name_of(record: UsageRecord) -> str:
        if split == "model":
            return record.model or ""
        return record.user if split == "user" else ""

    picked = [
        r
        for r in records
        if since <= r.ts < since + buckets * bucket_s and key_id in (None, r.key_id)
    ]
    counts = Counter(name_of(r) for r in picked)
    names = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:top]
    if split == "total":
        names = []
    sums: dict[tuple[bool, str], list[list[int]]] = {}
    for r in picked:
        name = name_of(r)
        group = (True, name) if name in names else (False, "")
        lists = sums.setdefault(group, [[0] * buckets for _ in MEASURES])
        i = (int(r.ts) - since) // bucket_s
        values = (
            1,
            (r.prompt_tokens or 0) + r.completion_tokens,  # type: ignore[operator]
            r.cost or 0,
            int(r.status >= 400),
            int(r.client_gone),
        )
        for column, value in zip(lists, values, strict=True):
            column[i] += value
    groups = []
    for key in [(True, n) for n in names] + [(False, "")]:
        if key not in sums:
            continue
        lists = sums[key]
        lists[2] = [(nano + 500) // 1000 for nano in lists[2]]  # nano-units, shown in micro
        groups.append(
            {
                "name": key[1] if key[0] else None,
                "other": split != "total" and not key[0],
                **dict(zip(MEASURES, lists, strict=True)),
            }
        )
    return groups


async def test_every_range_and_split_sums_what_the_records_hold(database: str) -> None:
    now = time.time()
    rng = random.Random(28)
    # Three days of records, and a few from 20 days ago (for the 30-day view).
    records = _records(rng, now, 1500)
    records += [r._replace(ts=r.ts - 20 * DAY) for r in _records(rng, now, 200)]
    store = await Store.open(database)
    try:
        await store.insert_usage(records)
        for bucket_s, buckets in ((HOUR, 24), (HOUR, 168), (DAY, 30)):
            since = (int(now) // bucket_s - buckets + 1) * bucket_s
            for split, key_id, top in (
                ("total", None, 5),
                ("total", 3, 5),
                ("model", None, 5),
                ("model", None, 1),  # one model, the rest (and "no model") as other
                ("model", 2, 2),  # one key by model: read from its records
                ("user", None, 2),
            ):
                where = (bucket_s, buckets, split, key_id, top)
                got = await store.usage_chart(since, bucket_s, buckets, split, key_id, top)  # type: ignore[arg-type]
                want = _expected(records, since, bucket_s, buckets, split, key_id, top)
                assert [g.as_json() for g in got] == want, where
                assert want, where  # (the period held records: the comparison was real)
                if top < 3:  # (three models, three users): the top ones, then the rest
                    assert len(want) == top + 1 and want[-1]["other"], where
        # The day's buckets start at 00:00 UTC, and every one is listed.
        since = (int(now) // DAY - 29) * DAY
        (total,) = await store.usage_chart(since, DAY, 30)
        assert len(total.sums["requests"]) == 30
        assert sum(total.sums["requests"]) == sum(r.ts >= since for r in records)
        with pytest.raises(ValueError):
            await store.usage_chart(since + 1, DAY, 30)  # not on the hour
    finally:
        await store.close()


async def test_the_upgrade_sums_each_keys_models_as_the_writer_does(database: str) -> None:
    """Revision 0023 makes the key_model rows of the records already there: the same rows
    (counts, cost, histograms) the writer makes for them."""
    records = _records(random.Random(19), time.time(), 800)
    rows = select(usage_hourly).where(usage_hourly.c.dim.like("key_model:%"))
    rows = rows.order_by(usage_hourly.c.dim, usage_hourly.c.hour, usage_hourly.c.value)
    # The records as the release before (revision 0022) wrote them, without such rows.
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(22))
            await conn.execute(insert(usage), usage_rows_at(22, records))
    finally:
        await engine.dispose()
    store = await Store.open(database)  # (upgraded: 0023 sums them)
    try:
        async with store._read() as conn:
            made = (await conn.execute(rows)).all()
        # The same records written by this release's writer, into emptied tables.
        async with store._write() as conn:
            await conn.execute(delete(usage))
            await conn.execute(delete(usage_hourly))
        await store.insert_usage(records)
        async with store._read() as conn:
            written = (await conn.execute(rows)).all()
    finally:
        await store.close()
    assert len({row.dim for row in written}) == 4  # (the four keys)
    duration = list(usage_hourly.c.keys()).index("duration_sum")
    assert [r[:duration] for r in made] == [r[:duration] for r in written]
    assert all(
        abs(m[duration] - w[duration]) < 1e-6 * max(1.0, w[duration])
        for m, w in zip(made, written, strict=True)
    )


async def _flushed(client: GatewayClient, count: int) -> None:
    for _ in range(count):
        resp = await client.post(
            "/api/chat",
            json={
                "model": "llama3.2",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert resp.status == 200
    assert await cast(TestServer, client.server).app[RELAY].usage.flush()


async def test_each_key_sees_what_it_may_and_bad_input_is_refused(
    admin: GatewayClient, client: GatewayClient
) -> None:
    await _flushed(client, 3)  # alice's laptop, a user key
    await _flushed(admin, 2)  # root's admin key
    # An admin: the gateway's, by default; by user; or its own.
    doc = await (await admin.get("/admin/series?range=24h&split=user")).json()
    assert doc["scope"] == "gateway" and doc["bucket_seconds"] == HOUR
    assert len(doc["starts"]) == 24 and doc["starts"][-1] <= time.time() < doc["starts"][-1] + HOUR
    assert {g["name"]: sum(g["requests"]) for g in doc["groups"]} == {"alice": 3, "root": 2}
    own = await (await admin.get("/admin/series?range=7d&scope=me")).json()
    assert len(own["starts"]) == 168 and [sum(g["requests"]) for g in own["groups"]] == [2]
    month = await (await admin.get("/admin/series?range=30d&split=model")).json()
    assert month["bucket_seconds"] == DAY and month["starts"][0] % DAY == 0
    assert [(g["name"], sum(g["requests"])) for g in month["groups"]] == [
        ("llama3.2:latest", 5)
    ]  # (as Ollama names it)
    # A user key: its own, whatever it asks; never the gateway's, never by user.
    mine = await (await client.get("/admin/series?range=30d&split=model")).json()
    assert mine["scope"] == "me" and [sum(g["requests"]) for g in mine["groups"]] == [3]
    for path, status in (
        ("/admin/series?range=24h&scope=gateway", 403),
        ("/admin/series?range=24h&split=user", 400),
    ):
        resp = await client.get(path)
        assert resp.status == status and "error" in await resp.json(), path
    # Hostile or mistaken input: a 400 naming what was wrong, never a traceback.
    for query in (
        "range=1y",
        "range=24h&hours=24",
        "split=key",
        "scope=everyone",
        "top=0",
        "top=21",
        "top=%EF%BC%95",  # a full-width digit five
        "top=99999999999999999999",
        "range=" + "x" * 5000,
        "scope=me&split=user",
    ):
        resp = await admin.get(f"/admin/series?{query}")
        body = await resp.json()
        assert resp.status == 400 and isinstance(body["error"], str), (query, body)
        assert len(body["error"]) < 200, query
