"""A full disk under the database and the usage journal: nothing served goes unrecorded.

A real gateway process keeps its SQLite database and its journal on a small tmpfs, which
a filler file then fills up. Records neither can take wait in memory (an admin's /health
says how many) and reach the database exactly once when space returns; beyond
USAGE_MEMORY_RECORDS, requests are refused with 503 `storage_full` before they are
served. Where no tmpfs can be mounted (not root) the tests skip, except under CI=true.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from aigateway.db.store import Store
from aigateway.records import UsageRecord
from aigateway.usage.journal import Journal, read_segment

from .conftest import make_key
from .helpers import eventually
from .test_server_process import Gateway, start_gateway

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted at the end."""
    folder = tmp_path / "volume"
    folder.mkdir()
    why = ""
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            why = f"cannot mount a tmpfs: {getattr(exc, 'stderr', None) or exc}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI=true: this test must run)")
        pytest.skip(why)
    try:
        yield folder
    finally:
        # Lazily: a file a failed test left open must not leave the mount behind.
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def fill(volume: Path) -> Path:
    """A filler file taking every free byte of the volume; and SQLite's write-ahead log
    emptied first, so that the database needs new space for any write."""
    db_path = volume / "tokens.db"
    if db_path.exists():
        wal = Path(f"{db_path}-wal")
        deadline = time.monotonic() + 10
        with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            # (Not while the gateway reads: it would leave the log as it is.)
            while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] or (
                wal.exists() and wal.stat().st_size
            ):
                assert time.monotonic() < deadline, "the write-ahead log stays"
                time.sleep(0.05)
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (64 * 1024, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


async def _chat(session: aiohttp.ClientSession, gateway: Gateway) -> aiohttp.ClientResponse:
    async with session.post(gateway.url + "/api/chat", data=CHAT) as resp:
        await resp.read()
        return resp


async def _health(gateway: Gateway, admin_key: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session,
        session.get(gateway.url + "/health") as resp,
    ):
        doc: dict[str, Any] = orjson.loads(await resp.read())
        return doc


async def _rows(db_path: str) -> int:
    store = await Store.open(db_path)
    try:
        return len(await store.usage_rows())
    finally:
        await store.close()


async def _database_refused(gateway: Gateway) -> None:
    """Wait until the database, too, has refused records for the full disk."""
    await eventually(lambda: "disk is full" in gateway.log_file.read_text(), 20)


def _stop_quietly(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.kill()
    gateway.process.wait(10)


async def test_records_served_while_the_disk_is_full_reach_the_database_once(
    volume: Path, upstream: TestServer, tmp_path: Path
) -> None:
    """Before: every answer served while the volume was full had no record afterwards
    (the records were let go once the database refused the segment, whose file had none
    of them), while the log said they waited in memory."""
    db_path = str(volume / "tokens.db")
    key = await make_key(db_path)
    admin_key = await make_key(db_path, "root", "ops", "admin")
    gateway = await start_gateway(upstream, db_path, tmp_path)
    try:
        filler = fill(volume)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            statuses = [(await _chat(session, gateway)).status for _ in range(20)]
            assert statuses == [200] * 20
            usage = (await _health(gateway, admin_key))["usage"]
            assert usage["waiting_in_memory"] == 20, usage
            assert usage["journal_error"] and not usage["refusing_requests"], usage
            await _database_refused(gateway)
            filler.unlink()  # space returns
            await eventually(lambda: gateway.log_file.read_text().count("takes records") > 0, 10)
            statuses += [(await _chat(session, gateway)).status for _ in range(3)]
        assert statuses == [200] * 23

        async def all_written() -> bool:
            return await _rows(db_path) == 23

        await _eventually_async(all_written, 15)
        usage = (await _health(gateway, admin_key))["usage"]
        assert usage == {
            "waiting_in_memory": 0,
            "journal_error": None,
            "refusing_requests": False,
        }
        stderr = await gateway.stop()
        assert gateway.process.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        _stop_quietly(gateway)
    gateway = await start_gateway(upstream, db_path, tmp_path)  # nothing left to replay
    await gateway.stop()
    assert await _rows(db_path) == 23  # exactly once


async def test_beyond_usage_memory_records_requests_are_refused_before_they_are_served(
    volume: Path, upstream: TestServer, tmp_path: Path
) -> None:
    """Before: requests were served whatever could not be recorded."""
    db_path = str(volume / "tokens.db")
    key = await make_key(db_path)
    admin_key = await make_key(db_path, "root", "ops", "admin")
    gateway = await start_gateway(upstream, db_path, tmp_path, USAGE_MEMORY_RECORDS="5")
    try:
        filler = fill(volume)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            served = [(await _chat(session, gateway)).status for _ in range(5)]
            assert served == [200] * 5
            for _ in range(3):
                async with session.post(gateway.url + "/api/chat", data=CHAT) as resp:
                    body = orjson.loads(await resp.read())
                    assert resp.status == 503, body
                    assert body["reason"] == "storage_full", body
                    assert "USAGE_MEMORY_RECORDS" in body["error"], body
                    assert int(resp.headers["Retry-After"]) > 0
            usage = (await _health(gateway, admin_key))["usage"]
            assert usage["waiting_in_memory"] == 5 and usage["refusing_requests"], usage
            await _database_refused(gateway)
            filler.unlink()

            async def admitted_again() -> bool:
                return (await _chat(session, gateway)).status == 200

            await _eventually_async(admitted_again, 10)

        async def all_written() -> bool:
            return await _rows(db_path) == 6

        await _eventually_async(all_written, 15)
        log_text = gateway.log_file.read_text()
        assert "status=503" in log_text
    finally:
        _stop_quietly(gateway)
    assert await _rows(db_path) == 6  # the five kept in memory and the one after


async def _eventually_async(check: Any, timeout: float) -> None:
    """Like helpers.eventually, for a check that must await."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _record(model_sent: str) -> UsageRecord:
    return UsageRecord(
        time.time(), 1, "ann", "laptop", "POST", "/api/chat", "llama3.2:latest", 200, 26, 6,
        1.0, 0.5, 10, 20, False, False, 0, None, model_sent,
    )  # fmt: skip


def test_a_line_the_full_disk_took_only_part_of_is_cut_off(volume: Path) -> None:
    """Before: a write the disk took only part of left a torn line, and the next record,
    appended once there was room, was glued to it: both lost when the segment was read."""
    journal = Journal(str(volume / "journal"))
    journal.open()
    assert journal.current is not None
    path = journal.current.path
    try:
        journal.append(_record("first"))  # the file's first page, mostly free
        size = journal.current_size()
        fill(volume)
        with pytest.raises(OSError):  # a line longer than the page has room for
            journal.append(_record("x" * 6000))
        assert journal.current_size() == size  # nothing of it left
        (volume / "filler").unlink()
        journal.append(_record("after"))
    finally:
        journal.close()
    records = read_segment(path)
    assert [r.model_sent for r in records] == ["first", "after"]
