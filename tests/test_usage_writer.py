"""The usage writer and its journal against real SQLite files: batches, a locked database,
a drained stop, records the database refuses, a database deleted or replaced, replay."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from aigateway.db.store import Store
from aigateway.records import UsageRecord
from aigateway.usage.journal import Journal
from aigateway.usage.writer import UsageWriter


def _writer(store: Store, folder: str | None = None) -> UsageWriter:
    journal = Journal(folder or store.path + ".usage-journal")
    journal.open()
    return UsageWriter(store, 0, journal)


def _segments(db_path: str) -> list[str]:
    return sorted(p.name for p in Path(db_path + ".usage-journal").glob("seg-*"))


def _record(number: int) -> UsageRecord:
    return UsageRecord(
        time.time(), 1, "ann", "laptop", "POST", "/chat", "llama3.2", 200, number, 1, 1.0, 0.5,
        10, 20, False,
    )  # fmt: skip


async def test_records_made_during_a_write_wait_for_the_next_flush(db_path: str) -> None:
    store = await Store.open(db_path)
    writer = _writer(store)
    await writer.start()
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
    writer = _writer(store)
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
    writer = _writer(store)  # not started: flushes are driven here
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


async def test_while_the_database_is_away_one_file_grows_and_memory_holds_nothing(
    db_path: str,
) -> None:
    store = await Store.open(db_path, busy_timeout_s=0.05)
    writer = _writer(store)
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            for flush in range(20):  # five seconds of flushes, the database locked
                for number in range(10):
                    writer.record(_record(flush * 10 + number))
                assert await writer.flush() is False
                assert writer._pending == []  # in the journal file only
            # The first refused segment, and the one that grows: not one per flush.
            assert len(_segments(db_path)) == 2
            other.execute("ROLLBACK")
        assert await writer.flush() is True  # the database is back: all written, in order
        rows = await store.usage_rows()
        assert [r.prompt_tokens for r in rows] == list(range(200))
        assert len(_segments(db_path)) == 1  # the new, empty current segment
    finally:
        await store.close()


async def test_a_database_locked_at_shutdown_loses_nothing(db_path: str) -> None:
    """Before: 1,000 of 1,000 records were dropped. Now they wait in the journal and the
    next start writes them, once."""
    store = await Store.open(db_path, busy_timeout_s=0.1)
    writer = _writer(store)
    await writer.start()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        for number in range(1000):
            writer.record(_record(number))
        await writer.close()
        other.execute("ROLLBACK")
    await store.close()
    assert _segments(db_path)
    store = await Store.open(db_path)
    writer = _writer(store)
    await writer.start()  # the next start
    await writer.close()
    rows = await store.usage_rows()
    await store.close()
    assert sorted(r.prompt_tokens or 0 for r in rows) == list(range(1000))
    assert _segments(db_path) == []


async def test_replay_is_exactly_once(db_path: str) -> None:
    """A process killed after the database took a segment but before the file went:
    the next start finds the segment's name in the database and only deletes the file."""
    store = await Store.open(db_path)
    writer = _writer(store)
    for number in range(10):
        writer.record(_record(number))
    folder = Path(db_path + ".usage-journal")
    (live,) = folder.glob("seg-*")
    kept = live.read_bytes()
    assert await writer.flush() is True
    live.write_bytes(kept)  # as if the unlink never happened
    os.chmod(live, 0o600)
    await writer.close()
    writer = _writer(store)
    await writer.start()
    await writer.close()
    rows = await store.usage_rows()
    await store.close()
    assert len(rows) == 10
    assert not live.exists()


async def test_a_record_the_database_refuses_is_set_aside_and_the_writer_goes_on(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one record with a 20-digit byte count killed the writer task; every later
    record was lost and SIGTERM hung."""
    store = await Store.open(db_path)
    writer = _writer(store)
    await writer.start()
    writer.record(_record(0)._replace(bytes_in=10**20))
    writer.record(_record(1)._replace(model=None, ts=float("nan")))
    for number in range(2, 50):
        writer.record(_record(number))
    await asyncio.sleep(0.5)
    writer.record(_record(50))
    await asyncio.wait_for(writer.close(), 5)
    rows = await store.usage_rows()
    await store.close()
    tokens = sorted(r.prompt_tokens or 0 for r in rows)
    assert tokens == [0, *range(2, 51)]  # the huge count clamped; the NaN time set aside
    assert max(r.bytes_in for r in rows) == 2**63 - 1
    rejected = Path(db_path + ".usage-journal", "rejected").read_text()
    assert rejected.count("\n") == 1 and rejected.startswith("[null,1,")  # NaN as JSON null


async def test_a_deleted_database_keeps_records_in_the_journal_until_one_is_back(
    db_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(db_path)
    writer = _writer(store)
    backup = tmp_path / "backup.db"
    shutil.copy(db_path, backup)
    os.unlink(db_path)
    for name in ("-wal", "-shm"):
        Path(db_path + name).unlink(missing_ok=True)
    writer.record(_record(1))
    assert await writer.flush() is False
    assert any("database file is gone" in r.getMessage() for r in caplog.records)
    writer.record(_record(2))
    assert await writer.flush() is False
    shutil.copy(backup, db_path)  # restored: another file at the path
    assert await writer.flush() is True
    await writer.close()
    rows = await store.usage_rows()  # the reopened database
    await store.close()
    assert sorted(r.prompt_tokens or 0 for r in rows) == [1, 2]
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT count(*) FROM usage").fetchone()[0] == 2
