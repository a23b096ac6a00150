"""After any restart, no request is admitted before the usage journal's records count.

A real gateway process (`python -m aigateway`) serves requests while another process
holds SQLite's write lock, so their records stay in the journal; it is then killed with
SIGKILL, as a crash would. The next gateway must count those records against the key's
token quota and budget before it admits anything: written to the database first when it
takes them, counted from the journal directly when it does not (yet)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from aigateway.budgets import Budget
from aigateway.pricing import Price
from aigateway.store import KeyLimits, Store

from .conftest import make_key
from .helpers import eventually
from .test_server_process import Gateway, start_gateway

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'
TOKENS_PER_CHAT = 26 + 6  # the fixture's prompt_eval_count + eval_count


@contextmanager
def write_lock(db_path: str) -> Iterator[None]:
    """Another process's write transaction: the gateway's usage inserts wait, then fail."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def _chat(gateway: Gateway, key: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
        session.post(gateway.url + "/api/chat", data=CHAT) as resp,
    ):
        return resp.status, await resp.text()


def _journaled(db_path: str) -> int:
    folder = Path(db_path + ".usage-journal")
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("seg-*"))


async def _kill(gateway: Gateway) -> None:
    gateway.process.kill()
    gateway.process.wait(10)


async def _usage_rows(db_path: str) -> int:
    store = await Store.open(db_path)
    try:
        return len(await store.usage_rows())
    finally:
        await store.close()


async def test_a_restart_counts_the_journal_against_the_token_quota_before_admitting(
    upstream: TestServer, db_path: str, tmp_path: Path
) -> None:
    """Before: today's tokens were loaded from the database before the journal's records
    were written to it, so a key that had used its whole quota got a fresh one after a
    SIGKILL (2,000 tokens passed a 1,000 quota)."""
    key = await make_key(db_path, limits=KeyLimits(tokens_per_day=4 * TOKENS_PER_CHAT - 1))
    gateway = await start_gateway(upstream, db_path, tmp_path)
    try:
        with write_lock(db_path):
            for _ in range(4):  # 128 tokens: the last one passes with 96 used
                status, text = await _chat(gateway, key)
                assert status == 200, text
            assert _journaled(db_path) == 4
            status, text = await _chat(gateway, key)
            assert status == 429 and "token quota" in text, (status, text)
            await _kill(gateway)  # the records are only in the journal
        assert await _usage_rows(db_path) == 0
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    gateway = await start_gateway(upstream, db_path, tmp_path)
    try:
        status, text = await _chat(gateway, key)
        assert status == 429 and "token quota" in text, (status, text)
    finally:
        await gateway.stop()
    assert await _usage_rows(db_path) == 4  # replayed once


async def test_a_restart_counts_spend_the_database_cannot_take_yet(
    upstream: TestServer, db_path: str, tmp_path: Path
) -> None:
    """Killed with 4.00 of a 5.00 budget spent, restarted while the database still cannot
    take the journal's records: the spend is counted from the journal, so a 2.00 request
    is refused (before: the budget started at 0.00 again, and 8.00 were spent of 5.00);
    once the database takes them, they are written once."""
    key = await make_key(db_path)
    store = await Store.open(db_path)
    try:
        (record,) = await store.list_keys()
        await store.set_key_budget(record.id, Budget(5_000_000, "daily"))
        await store.set_price(Price("llama3*", per_request=2_000_000))
    finally:
        await store.close()
    gateway = await start_gateway(upstream, db_path, tmp_path)
    try:
        with write_lock(db_path):
            for _ in range(2):
                status, text = await _chat(gateway, key)
                assert status == 200, text
            status, text = await _chat(gateway, key)
            assert status == 402 and "1.000000 USD left" in text, (status, text)
            await _kill(gateway)
            restarted = await start_gateway(upstream, db_path, tmp_path)
            gateway = restarted
            status, text = await _chat(gateway, key)
            assert status == 402 and "1.000000 USD left" in text, (status, text)
        # The database takes the records now: written once, and still counted once.
        await eventually(lambda: _journaled(db_path) == 0, 15)
        status, text = await _chat(gateway, key)
        assert status == 402 and "1.000000 USD left" in text, (status, text)
    finally:
        await gateway.stop()
    assert await _usage_rows(db_path) == 2
