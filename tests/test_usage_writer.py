"""The usage writer against a real SQLite file: batches, a locked database, a drained stop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing

from aigateway.store import Store, UsageRecord
from aigateway.usage import UsageWriter


def _record(number: int) -> UsageRecord:
    return UsageRecord(
        time.time(), 1, "ann", "laptop", "POST", "/chat", "llama3.2", 200, number, 1, 1.0, 0.5,
        10, 20, False,
    )  # fmt: skip


async def test_records_made_during_a_write_wait_for_the_next_flush(db_path: str) -> None:
    store = await Store.open(db_path)
    writer = UsageWriter(store, retention_days=0)
    writer.start()
    try:
        for number in range(3000):
            writer.record(_record(number))
            if number % 100 == 0:
                await asyncio.sleep(0.01)  # records keep coming while the writer works
        await writer.close()
        rows = await store.usage_rows()
    finally:
        await store.close()
    assert [r.prompt_tokens for r in rows] == list(range(3000))
    assert writer.written == 3000


async def test_a_flush_writes_what_was_pending_when_it_began(db_path: str) -> None:
    store = await Store.open(db_path)
    writer = UsageWriter(store, retention_days=0)
    try:
        for number in range(100):
            writer.record(_record(number))
        flushing = asyncio.create_task(writer.flush())
        await asyncio.sleep(0)  # the flush has taken its batch and waits on SQLite
        for number in range(100, 150):
            writer.record(_record(number))
        assert await flushing is True
        assert writer.written == 100  # the later 50 wait for the next flush
        assert await writer.flush() is True
        assert writer.written == 150
    finally:
        await store.close()


async def test_a_locked_database_keeps_the_records_in_order(db_path: str) -> None:
    store = await Store.open(db_path, busy_timeout_s=0.1)
    writer = UsageWriter(store, retention_days=0)  # not started: flushes are driven here
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            for number in range(5):
                writer.record(_record(number))
            assert await writer.flush() is False
            writer.record(_record(5))
            other.execute("ROLLBACK")
        assert await writer.flush() is True
        rows = await store.usage_rows()
    finally:
        await store.close()
    assert [r.prompt_tokens for r in rows] == [0, 1, 2, 3, 4, 5]
