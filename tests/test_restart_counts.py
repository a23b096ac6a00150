"""After any restart, no request is admitted before the usage journal's records count.

A real gateway process (`python -m aigateway`) serves requests while another process
holds SQLite's write lock, so their records stay in the journal; it is then killed with
SIGKILL, as a crash would. The next gateway must count those records against the key's
token quota and budget before it admits anything: written to the database first when it
takes them, counted from the journal directly when it does not (yet)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from aigateway.access.budgets import period_start
from aigateway.db.store import Store
from aigateway.records import DAY, Budget, KeyLimits, Price
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.testing.pgserver import PostgresServer

from .conftest import make_key
from .helpers import clock_room, eventually
from .test_instances import _key, cli, status_of
from .test_server_process import Gateway, start_gateway


@pytest.fixture(autouse=True)
async def within_one_day() -> None:
    """Every test here counts a day's tokens across a restart: not across 00:00 UTC."""
    await clock_room(DAY, 90)


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


# PostgreSQL: what a gateway decided on its own reckoning while the database was away
# reaches the shared rows with its usage records, in the transaction that inserts them.


async def _restart_after_an_outage(
    upstream: TestServer, server: PostgresServer, url: str, key: str, tmp_path: Path, away: int
) -> tuple[list[int], Gateway]:
    """A `local` gateway serves one request on the database, then (the database stopped)
    `away` requests on its own counts, and is killed; the database comes back and a new
    gateway starts. The statuses while away, and the new gateway."""
    folder = tmp_path / "gw"
    folder.mkdir()
    settings = {"DATABASE_URL": url, "LIMITS_WHEN_DATABASE_AWAY": "local"}
    gateway = await start_gateway(upstream, str(folder / "unused.db"), folder, **settings)
    try:
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, gateway, key) == 200
            # Written, and given back to the shared rows, before the outage.
            await eventually(lambda: server.sql(USAGE_ROWS, "outage") == "1", 10)
            await asyncio.sleep(0.5)
            server.stop("fast")
            statuses = [await status_of(session, gateway, key) for _ in range(away)]
        await _kill(gateway)
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    server.resume()
    return statuses, await start_gateway(upstream, str(folder / "unused.db"), folder, **settings)


USAGE_ROWS = "SELECT count(*) FROM usage"


@pytest.fixture
def stoppable_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again mid-test."""
    server = PostgresServer().start()
    server.sql("CREATE DATABASE outage")
    yield server
    server.close()


async def test_spend_taken_while_postgresql_was_away_outlives_a_sigkill(
    upstream: TestServer, stoppable_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A 5.00 budget, 2.00 a request: 2.00 spent on the database, then 2.00 on the local
    reckoning while it is away, then the gateway is killed. Before: the local spend died
    with the process (its give-back was only queued), so after the restart the budget
    showed 2.00 spent and let another 2.00 pass, and then more (8.00 of 5.00)."""
    url = stoppable_postgres.url("outage")
    assert cli("--set-price", "llama3*", "--per-request", "2", "--db", url).returncode == 0
    assert cli("--add-user", "budgeted", "--budget", "5", "--db", url).returncode == 0
    key = _key(url, "budgeted")
    away, gateway = await _restart_after_an_outage(
        upstream, stoppable_postgres, url, key, tmp_path, away=2
    )
    try:
        assert away == [200, 402]
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, gateway, key) == 402
        spent = stoppable_postgres.sql("SELECT spent FROM budget_spend", "outage")
        assert int(spent) == 4 * 10**9  # nano-units: both requests, once
    finally:
        await gateway.stop()
    assert stoppable_postgres.sql(USAGE_ROWS, "outage") == "2"


async def test_tokens_used_while_postgresql_was_away_reach_the_shared_quota(
    upstream: TestServer, stoppable_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A quota of 100 tokens a day, 32 a request: one on the database, three on the local
    counts while it is away (128), then a SIGKILL. Before: those tokens never reached the
    shared count (the local admission held no ticket to give them back with), so after the
    restart the quota showed 32 used and admitted more."""
    url = stoppable_postgres.url("outage")
    key = _key(url, "quota", "--tokens-per-day", str(4 * TOKENS_PER_CHAT - 28))
    away, gateway = await _restart_after_an_outage(
        upstream, stoppable_postgres, url, key, tmp_path, away=4
    )
    try:
        assert away == [200, 200, 200, 429]
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, gateway, key) == 429
        tokens = stoppable_postgres.sql("SELECT day_tokens FROM limit_counters", "outage")
        assert int(tokens) == 4 * TOKENS_PER_CHAT  # each request once
    finally:
        await gateway.stop()


async def test_a_record_replayed_twice_counts_once_on_the_shared_rows(pg_url: str) -> None:
    """The insert that claims a journal segment's name brings its local records' tokens
    and costs to the shared rows; a second insert of the same segment changes nothing."""
    from aigateway.records import LocalUsageRecord

    assert cli("--add-user", "ann", "--budget", "5", "--db", pg_url).returncode == 0
    _key(pg_url, "ann", "--tokens-per-day", "1000")
    store = await Store.open(pg_url)
    try:
        (key,) = await store.list_keys()
        now = time.time()
        owner = f"user:{key.user_id}"
        # The user's budget row, as the first reservation makes it.
        await _sql(pg_url, "INSERT INTO budget_spend VALUES ($1, 'monthly', $2, 0, 0)",
                   owner, period_start("monthly", now))  # fmt: skip
        record = LocalUsageRecord(
            now, key.id, "ann", "k", "POST", "/api/chat", "llama3.2:latest", 200, 26, 6,
            1.0, 0.5, 10, 20, False, False, 2 * 10**9,
        )  # fmt: skip
        await store.insert_usage([record, record], "seg-replayed")
        await store.insert_usage([record, record], "seg-replayed")  # replayed: nothing
        rows = await store.usage_rows()
    finally:
        await store.close()
    assert len(rows) == 2
    assert await _sql(pg_url, "SELECT day_tokens FROM limit_counters") == 2 * TOKENS_PER_CHAT
    assert await _sql(pg_url, "SELECT spent FROM budget_spend") == 4 * 10**9


async def _sql(url: str, statement: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def test_tokens_of_a_request_ending_while_postgresql_is_away_outlive_a_sigkill(
    upstream: TestServer, fake: FakeOllama, stoppable_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A stream admitted on the database ends while it is away: what it used would wait in
    memory to be given back, and die with the process. Its record carries it instead."""
    server = stoppable_postgres
    url = server.url("outage")
    fake.slow_interval = 1.5  # four lines: 4.5 s
    streamer = _key(url, "streamer", "--tokens-per-day", "1000")
    other = _key(url, "other", "--tokens-per-day", "1000")
    folder = tmp_path / "gw"
    folder.mkdir()
    settings = {"DATABASE_URL": url, "LIMITS_WHEN_DATABASE_AWAY": "local"}
    gateway = await start_gateway(upstream, str(folder / "unused.db"), folder, **settings)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.url + "/api/chat",
                data=b'{"model":"slow","messages":[{"role":"user","content":"hi"}]}',
                headers={"Authorization": f"Bearer {streamer}"},
            ) as resp,
        ):
            assert resp.status == 200
            await resp.content.readline()  # admitted on the database, under way
            server.stop("fast")
            assert await status_of(session, gateway, other) == 200  # finds it away
            await resp.read()
        await eventually(lambda: _journaled(str(folder / "unused.db")) >= 2, 5)
        await _kill(gateway)
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    server.resume()
    gateway = await start_gateway(upstream, str(folder / "unused.db"), folder, **settings)
    await gateway.stop()
    tokens = server.sql(
        "SELECT l.day_tokens FROM limit_counters l JOIN keys k ON k.id = l.key_id"
        " JOIN users u ON u.id = k.user_id WHERE u.name = 'streamer'",
        "outage",
    )
    assert int(tokens) == TOKENS_PER_CHAT
