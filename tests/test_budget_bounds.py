"""Budgets that hold for every kind of price (issue 24): parallel requests priced by tokens
or by time reserve their whole reserved cost, on SQLite and across three gateways on
PostgreSQL; two waited-for round trips at most; costs in nano-units; sums that saturate."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from alembic import command
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.limits_shared import SharedLimits
from aigateway.admin.reports import user_invoice
from aigateway.db.migrate import APPLICATION_ID, _config
from aigateway.db.rollups import rollup_rows, upsert_sql
from aigateway.db.store import Store
from aigateway.http.appkeys import KEY_TABLE
from aigateway.records import (
    MAX_COST_NANO,
    MAX_PRICE,
    MAX_SUM_NANO,
    MICRO,
    PRICE_FIELDS,
    USAGE_COLUMNS,
    Budget,
    BudgetLine,
    KeyLimits,
    Price,
    UsageRecord,
)
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key
from .helpers import eventually
from .test_instances import _key, _three_gateways, cli

# The fake's streamed chat (chat-stream.ndjson): 6 output tokens, 4.883583458 s of model time.
STREAM = b'{"model":"slow","messages":[{"role":"user","content":"hi"}]}'
PER_TOKEN = Price("slow", per_million_output=100 * MICRO)  # 600 micro-units a stream
PER_SECOND = Price("slow", per_second=1000)  # 4883.583458 micro-units a stream
COST_MICRO = {"tokens": 600, "seconds": 4884}  # one stream, as shown
BUDGET = {"tokens": 900, "seconds": 7325}  # about one and a half streams


async def _fifty_at_once(
    session: ClientSession, urls: list[str], key: str
) -> tuple[list[int], list[str]]:
    async def one(i: int) -> tuple[int, str]:
        async with session.post(
            urls[i % len(urls)] + "/api/chat",
            data=STREAM,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            return resp.status, await resp.text()

    done = await asyncio.gather(*(one(i) for i in range(50)))
    return [s for s, _ in done], [text for s, text in done if s == 402]


def _within_the_bound(kind: str, statuses: list[int], costs: list[int]) -> None:
    """The bound in the token quota's form: spend ends below the budget plus what the
    requests admitted last used beyond their reservations (here: at most one stream's
    cost past it, since one stream's reservation alone exceeds the budget)."""
    assert set(statuses) <= {200, 402}, statuses
    assert 1 <= statuses.count(200) <= 2, statuses  # (all 50 before: 25 times the budget)
    assert costs == [COST_MICRO[kind]] * statuses.count(200)
    assert sum(costs) <= BUDGET[kind] + COST_MICRO[kind]


@pytest.mark.parametrize("kind", ["tokens", "seconds"])
async def test_fifty_streams_at_once_stay_within_the_budget_on_sqlite(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
    kind: str,
) -> None:
    fake.slow_interval = 0.05
    key = await make_key(db_path, "acme", "laptop")
    store = await Store.open(db_path)
    await store.set_user_budget("acme", Budget(BUDGET[kind], "monthly"))
    await store.set_price(PER_TOKEN if kind == "tokens" else PER_SECOND)
    gateway = await aiohttp_server(create_app(settings))
    try:
        async with ClientSession() as session:
            statuses, refusals = await _fifty_at_once(session, [str(gateway.make_url(""))], key)
        assert await gateway.app[RELAY].usage.flush()
        costs = [r.cost for r in await store.usage_rows()]
        _within_the_bound(kind, statuses, costs)  # type: ignore[arg-type]
        # The refusal names the reserved cost and how to lower it.
        reserve = "0.204800" if kind == "tokens" else "0.060000"  # 2048 tokens; 60 s
        assert f"a request of this model reserves {reserve} USD" in refusals[0]
        assert "max_tokens / num_predict" in refusals[0]
    finally:
        await store.close()


async def test_fifty_streams_at_once_stay_within_the_budget_on_three_gateways(
    fake: FakeOllama, upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    """By tokens (user acme) and by time (user bea, another model), 50 streams at once
    spread over three gateway processes on one PostgreSQL database."""
    fake.slow_interval = 0.05
    prices = {"tokens": ("--per-million-output", "100"), "seconds": ("--per-second", "0.001")}
    gateways = await _three_gateways(upstream, pg_url, tmp_path)
    urls = [gw.url for gw in gateways]
    try:
        for kind, user in (("tokens", "acme"), ("seconds", "bea")):
            made = cli("--set-price", "slow", *prices[kind], "--db", pg_url)
            assert made.returncode == 0, made.stderr
            budget = f"{BUDGET[kind] / MICRO:.6f}"
            assert cli("--add-user", user, "--budget", budget, "--db", pg_url).returncode == 0
            key = _key(pg_url, user)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                statuses, refusals = await _fifty_at_once(session, urls, key)
            assert refusals and "max_tokens / num_predict" in refusals[0]
            store = await Store.open(pg_url)
            try:
                rows: list[UsageRecord] = []
                for _ in range(100):  # (each gateway writes its records within 0.25 s)
                    rows = [r for r in await store.usage_rows(user=user) if r.status == 200]
                    if len(rows) == statuses.count(200):
                        break
                    await asyncio.sleep(0.1)
                _within_the_bound(kind, statuses, [r.cost for r in rows])  # type: ignore[misc]
            finally:
                await store.close()
    finally:
        for gw in gateways:
            await gw.stop()


class _Recorder:
    """A pooled connection that notes each statement it is given."""

    def __init__(self, conn: Any, seen: list[str]) -> None:
        self._conn, self._seen = conn, seen

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._conn, name)
        if name in ("fetchrow", "fetch", "fetchval", "execute", "executemany"):

            def noted(query: str, *args: Any, **kwargs: Any) -> Any:
                self._seen.append(query)
                return attribute(query, *args, **kwargs)

            return noted
        return attribute


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement the shared limits and budgets send, in order."""
    seen: list[str] = []
    original = SharedLimits.connection

    @contextlib.asynccontextmanager
    async def noted(self: SharedLimits, timeout: float | None = None) -> AsyncIterator[Any]:
        async with original(self, timeout) as conn:
            yield _Recorder(conn, seen)

    monkeypatch.setattr(SharedLimits, "connection", noted)
    yield seen


# What a request waits for: admission, the token top-up, the budgets' reservation.
_WAITED_FOR = (
    "aigateway_admit(",
    "day_reserved = day_reserved +",
    "aigateway_budget_reserve(",
    "aigateway_body_reserve(",
)


def _waited_for(seen: list[str]) -> int:
    return sum(any(mark in query for mark in _WAITED_FOR) for query in seen)


async def test_a_key_with_limits_and_a_budget_waits_for_two_round_trips_at_most(
    aiohttp_server: AiohttpServer,
    upstream: TestServer,
    pg_url: str,
    statements: list[str],
    tmp_path: Path,
) -> None:
    """Requests whose bodies ask for more output than admission reserved (a token top-up)
    of a model with a price, by a key with limits and a budget: two waited-for
    statements each (admission; the top-up with the budgets' reservation), where there
    were three; none for a key without limits or budget. And both reservations are
    really taken: the key's tokens and the user's budget, in the database."""
    limited = await make_key(pg_url, "acme", "k", limits=KeyLimits(rpm=1000, tokens_per_day=10**7))
    free = await make_key(pg_url, "bea", "k")
    store = await Store.open(pg_url)
    await store.set_user_budget("acme", Budget(1000 * MICRO, "monthly"))
    price = Price("llama3.2", per_million_output=MICRO)
    await store.set_price(price)
    await store.set_price(Price("stall", per_million_output=MICRO))
    await store.close()
    settings = Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"),
        database_url=pg_url,
        usage_journal_dir=str(tmp_path / "journal"),  # (not beside the default tokens.db)
    )
    gateway = await aiohttp_server(create_app(settings))
    await eventually(lambda: gateway.app[KEY_TABLE].prices.for_model("llama3.2") == price)
    body = b'{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":4096}}'
    url = str(gateway.make_url("/api/generate"))
    async with ClientSession() as session:
        for key, waited in ((limited, 2), (free, 0)):
            statements.clear()
            for _ in range(5):
                async with session.post(
                    url, data=body, headers={"Authorization": f"Bearer {key}"}
                ) as resp:
                    assert resp.status == 200, await resp.text()
            assert _waited_for(statements) == 5 * waited, statements
        # A stream held open: its top-up and its reserved cost are in the database.
        stall = body.replace(b"llama3.2", b"stall").replace(b'"stream":false', b'"stream":true')
        async with session.post(
            url, data=stall, headers={"Authorization": f"Bearer {limited}"}
        ) as resp:
            assert resp.status == 200
            await resp.content.readline()
            shared = gateway.app[RELAY].shared
            assert shared is not None
            # (once the earlier requests' returns are written, a moment after they ended)
            held = (len(stall) // 4 + 4096, 4096 * 1000)  # tokens; nano-units of budget
            for _ in range(50):
                async with shared.connection() as conn:
                    tokens = await conn.fetchval("SELECT day_reserved FROM limit_counters")
                    reserved = await conn.fetchval("SELECT reserved FROM budget_spend")
                if (tokens, reserved) == held:
                    break
                await asyncio.sleep(0.1)
            assert (tokens, reserved) == held


async def test_a_thousand_embeddings_of_0_4_micro_units_cost_400(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
) -> None:
    """16 prompt tokens at 0.025 a million: 0.4 micro-units each, which rounded to 0 per
    request before; 1,000 of them now cost 400 micro-units in every total."""
    key = await make_key(db_path, "acme", "laptop")
    store = await Store.open(db_path)
    await store.set_user_budget("acme", Budget(MICRO, "monthly"))
    await store.set_price(Price("all-minilm", per_million_input=25_000))
    gateway = await aiohttp_server(create_app(settings))
    url = str(gateway.make_url("/api/embed"))
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with ClientSession() as session:

            async def one() -> int:
                body = b'{"model":"all-minilm","input":"hi"}'
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            for _ in range(10):
                assert await asyncio.gather(*(one() for _ in range(100))) == [200] * 100
        assert await gateway.app[RELAY].usage.flush()
        (total,) = await store.usage_summary(())
        assert total["requests"] == 1000 and total["cost"] == 400
        invoice = await user_invoice(store, "acme", "USD", 0, None)
        assert invoice["total"]["cost"] == 400
        user = await store.get_user("acme")
        line = BudgetLine(f"user:{user.id}", "user 'acme'", Budget(MICRO, "monthly"))
        assert gateway.app[RELAY].budgets.view(line, time.time())["spent"] == 400
        report = cli("--check-budget", "acme", "--format", "json", "--db", db_path).stdout
        assert '"spent": 400' in report
    finally:
        await store.close()


def test_the_migration_turns_stored_costs_into_nano_units(tmp_path: Path) -> None:
    """A database at revision 0013 with a cost of 1234 micro-units, in a record and in its
    hourly rollups: upgraded, they hold 1,234,000 nano-units and every report still shows
    1234 micro-units."""
    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0013")
        conn.exec_driver_sql("PRAGMA user_version = 13")
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
    engine.dispose()
    record = UsageRecord(
        1_700_000_000.5, 1, "acme", "laptop", "POST", "/api/chat", "llama3.2", 200,
        26, 6, 12.5, 3.5, 100, 200, False, False, 1234, None,
    )  # fmt: skip
    with contextlib.closing(sqlite3.connect(path)) as db:
        # (as the release at 0013 wrote it: without model_sent, added by 0016)
        old_columns = USAGE_COLUMNS[: USAGE_COLUMNS.index("model_sent")]
        listed = ", ".join(f'"{name}"' for name in old_columns)
        db.execute(
            f"INSERT INTO usage ({listed}) VALUES ({', '.join('?' * len(old_columns))})",
            list(record)[: len(old_columns)],
        )
        db.executemany(upsert_sql(False), rollup_rows([record]))
        db.commit()

    async def check() -> None:
        store = await Store.open(str(path))  # upgraded here
        try:
            (shown,) = await store.usage_rows()
            assert shown.cost == 1234
            assert (await store.usage_summary(()))[0]["cost"] == 1234
            assert (await store.usage_summary((), exact=True))[0]["cost"] == 1234
            assert await store.spend_since("key:1", 0) == 1_234_000
        finally:
            await store.close()

    asyncio.run(check())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT cost FROM usage").fetchall() == [(1_234_000,)]
        hourly = {c for (c,) in db.execute("SELECT cost FROM usage_hourly")}
        assert hourly == {1_234_000}


async def test_an_extreme_price_saturates_and_every_report_answers(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
) -> None:
    """The largest price of every kind, set through the admin API: each request costs
    MAX_COST_NANO, twelve of them sum past 2^63 nano-units (SQLite's sum() would raise),
    and every route that reports money answers 200 with the sums saturated."""
    root = await make_key(db_path, "root", "ops", "admin")
    spender = await make_key(db_path, "acme", "laptop")
    store = await Store.open(db_path)
    await store.set_user_budget("acme", Budget(MAX_PRICE, "monthly"))
    gateway = await aiohttp_server(create_app(settings))
    admin: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {root}"}
    )
    extreme = {field: MAX_PRICE for field in PRICE_FIELDS}
    resp = await admin.post("/admin/prices", json={"pattern": "llama3*", **extreme})
    assert resp.status == 200, await resp.text()
    await eventually(lambda: gateway.app[KEY_TABLE].prices.for_model("llama3.2") is not None)
    chat = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'
    try:
        # The budget (10^15 micro-units) holds one request at the most; an admin's key
        # has none.
        statuses = []
        for key in [spender] * 2 + [root] * 12:
            async with admin.post(  # (the header's key is the one that counts)
                "/api/chat", data=chat, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                statuses.append(resp.status)
        assert statuses == [200, 402] + [200] * 12
        assert await gateway.app[RELAY].usage.flush()
        costs = {r.cost for r in await store.usage_rows()}
        assert costs == {MAX_COST_NANO // 1000}  # each request saturated, shown in micro
        for path in (
            "/admin/stats",
            "/admin/series",
            "/admin/usage",
            "/admin/usage?format=csv",
            "/admin/usage?format=json",
            "/admin/users/acme/budget",
            "/admin/users/acme/invoice",
            "/admin/users/root/invoice",
            "/admin/me",
            "/admin/keys",
            "/admin/users",
        ):
            resp = await admin.get(path)
            assert resp.status == 200, (path, await resp.text())
        (total,) = await store.usage_summary(())
        assert total["cost"] == MAX_SUM_NANO // 1000  # saturated, not overflowed
        invoice = await (await admin.get("/admin/users/root/invoice")).json()
        assert invoice["total"]["cost"] == MAX_SUM_NANO // 1000
        budget = await (await admin.get("/admin/users/acme/budget")).json()
        assert budget["budget"]["spent"] == MAX_PRICE and budget["budget"]["exhausted"]
        made = cli("--usage", "--by", "model", "--db", db_path)
        assert made.returncode == 0, made.stderr
    finally:
        await store.close()
