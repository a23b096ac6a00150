"""The store's behaviour, the same on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from aigateway.db.store import Store
from aigateway.db.usage import UsageRejected
from aigateway.records import (
    DAY,
    DuplicateKeyError,
    InvalidInputError,
    KeyLimits,
    KeyNotFoundError,
    StoreError,
    UsageQuery,
    UsageRecord,
)
from aigateway.testing.pgserver import PASSWORD, PostgresServer


def _record(ts: float, key_id: int, status: int = 200, tokens: int = 5) -> UsageRecord:
    return UsageRecord(
        ts, key_id, "alice", "laptop", "POST", "/chat", "llama3.2", status,
        tokens, 2 * tokens, 12.3456789, 1.5, 80, 400, False, False,
    )  # fmt: skip


async def test_keys_are_made_changed_revoked_and_purged(database: str) -> None:
    store = await Store.open(database)
    try:
        record, secret = await store.create_key(
            "alice", "laptop", "user", None, KeyLimits(rpm=5), ["llama3*"]
        )
        assert secret.startswith("aig_") and record.id > 0
        assert record.limits.rpm == 5 and record.models == ("llama3*",)
        with pytest.raises(DuplicateKeyError, match="already has an active key"):
            await store.create_key("alice", "laptop")
        changed = await store.update_key(record.id, {"rph": 100, "models": None, "role": "admin"})
        assert (changed.limits.rph, changed.models, changed.role) == (100, None, "admin")
        with pytest.raises(InvalidInputError):
            await store.update_key(record.id, {"rpm": -1})
        assert (await store.find_active_key("alice", "laptop")).id == record.id
        revoked = await store.revoke_key("alice", "laptop")
        assert revoked.revoked and revoked.revoked_at is not None
        with pytest.raises(KeyNotFoundError, match="no active key"):
            await store.revoke_key("alice", "laptop")
        with pytest.raises(KeyNotFoundError, match="no user"):
            await store.find_active_key("nobody", "x")
        again, _ = await store.create_key("alice", "laptop")  # the name is free again
        assert again.id != record.id
        assert await store.purge_revoked("alice", "laptop") == 1
        assert [k.id for k in await store.list_keys()] == [again.id]
    finally:
        await store.close()


async def test_a_change_elsewhere_moves_the_version_the_gateway_polls(database: str) -> None:
    server = await Store.open(database)
    cli = await Store.open(database)
    try:
        before = await server.data_version()
        assert await server.data_version() == before  # nothing changed: no reload
        record, _ = await cli.create_key("bob", "phone")
        after_create = await server.data_version()
        assert after_create != before
        await cli.revoke_key_id(record.id)
        assert await server.data_version() != after_create
    finally:
        await server.close()
        await cli.close()


async def test_usage_lands_once_and_reads_back_the_same(database: str) -> None:
    store = await Store.open(database)
    try:
        now = time.time()
        records = [
            _record(now - i, key_id=1 + i % 2, status=200 if i % 3 else 500) for i in range(250)
        ]
        await store.insert_usage(records, "seg-a")
        assert await store.segment_written("seg-a")
        assert not await store.segment_written("seg-b")
        await store.insert_usage(records[:1], "seg-a")  # a replay: not written twice
        rows = await store.usage_rows()
        assert len(rows) == 250
        assert rows[0].duration_ms == 12.346 and rows[0].ttfb_ms == 1.5
        assert await store.tokens_since(now - 1000) == {1: 125 * 15, 2: 125 * 15}
        summary = await store.usage_summary(("key_id",))
        assert [(s["key_id"], s["requests"]) for s in summary] == [(1, 125), (2, 125)]
        assert sum(int(s["errors"]) for s in summary) == 84  # type: ignore[call-overload]
        assert summary[0]["p95_ms"] == 13.45  # the middle of its latency bucket
        exact = await store.usage_summary(("key_id",), exact=True)
        assert exact[0]["p95_ms"] == 12.35
        hour_start = (now - 100) // 3600 * 3600  # pruning goes by whole hours
        assert await store.prune_usage(now - 100) == sum(r.ts < hour_start for r in records)
        await store.record_last_used({1: now})
    finally:
        await store.close()


async def test_the_cached_mark_reads_back_and_picks_records(database: str) -> None:
    """`cached`, which no sums hold: the records, a page of them and every kind of
    summary pick by it alike, over whole days (the daily sums' period) too."""
    store = await Store.open(database)
    try:
        now = time.time()
        records = [_record(now - i, key_id=1)._replace(cached=i % 4 == 0) for i in range(40)]
        await store.insert_usage(records)
        page = await store.usage_page(UsageQuery(cached=True, model="llama3.2"), 50)
        assert [r.cached for _, r in page] == [True] * 10
        assert len(await store.usage_page(UsageQuery(cached=False), 50)) == 30
        for period in (UsageQuery(), UsageQuery(since=0, until=now + 2 * DAY)):
            for cached, requests in ((True, 10), (False, 30), (None, 40)):
                where = replace(period, cached=cached)
                for group_by in ((), ("model",), ("user", "key_name", "key_id")):
                    found = await store.usage_summary(group_by, where)
                    assert [row["requests"] for row in found] == [requests], (where, group_by)
        exact = await store.usage_summary((), UsageQuery(cached=True), exact=True)
        assert exact[0]["requests"] == 10
    finally:
        await store.close()


async def test_a_record_the_database_refuses_is_rejected_not_retried(database: str) -> None:
    store = await Store.open(database)
    try:
        bad = _record(time.time(), 1)._replace(ts=None)  # type: ignore[arg-type]
        with pytest.raises(UsageRejected):
            await store.insert_usage([bad], "seg-bad")
        assert not await store.segment_written("seg-bad")  # the batch rolled back whole
    finally:
        await store.close()


async def test_simultaneous_writers_lose_nothing(database: str) -> None:
    stores = [await Store.open(database) for _ in range(3)]
    try:
        now = time.time()
        await asyncio.gather(
            *(
                store.insert_usage([_record(now, n)] * 50, f"seg-{n}-{i}")
                for n, store in enumerate(stores)
                for i in range(4)
            )
        )
        assert len(await stores[0].usage_rows()) == 3 * 4 * 50
    finally:
        for store in stores:
            await store.close()


async def test_a_database_made_by_a_newer_release_is_refused(database: str) -> None:
    store = await Store.open(database)
    try:
        async with store._write() as conn:  # what a newer release would leave
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    finally:
        await store.close()
    with pytest.raises(StoreError, match="newer aigateway"):
        await Store.open(database)


async def test_postgresql_unreachable_is_one_line_without_the_password(
    postgres: PostgresServer,
) -> None:
    closed = f"postgresql://aigateway:{PASSWORD}@127.0.0.1:1/aigateway"
    with pytest.raises(StoreError) as caught:
        await Store.open(closed, busy_timeout_s=2)
    message = str(caught.value)
    assert PASSWORD not in message and "***" in message and "\n" not in message
    wrong = postgres.url("postgres").replace(PASSWORD, "wrong-password")
    with pytest.raises(StoreError) as caught:
        await Store.open(wrong, busy_timeout_s=2)
    assert "wrong-password" not in str(caught.value) and "password" in str(caught.value)
