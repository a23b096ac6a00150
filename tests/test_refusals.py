"""Refused requests are counted per hour, reason, key and user, written with the usage
batches (never on the request path), and shown by /admin/stats, the key and user views
and /admin/usage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.access.keytable import bootstrap_record
from aigateway.db.migrate import HEAD
from aigateway.db.refusals import NO_KEY, RefusalRow
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.errors import Refused
from aigateway.records import KeyLimits, StoreError
from aigateway.usage import refusals
from aigateway.usage.refusals import RefusalCounts, RefusalWriter

from .conftest import GatewayClient, make_key
from .helpers import at_revision, clock_room, eventually, old_key, old_usage_record
from .test_server_process import start_gateway

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def made_up_key() -> str:
    return "aig_" + secrets.token_urlsafe(32)[:43].ljust(43, "x")


async def refused(admin: GatewayClient, query: str = "") -> dict[str, Any]:
    resp = await admin.get(f"/admin/stats?parts=refused{query}")
    assert resp.status == 200, await resp.text()
    document: dict[str, Any] = (await resp.json())["refused"]
    return document


async def settled(admin: GatewayClient, total: int, query: str = "") -> dict[str, Any]:
    """The refused section once `total` refusals are written (a flush or two)."""
    latest: dict[str, Any] = {}

    async def poll() -> None:
        nonlocal latest
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            latest = await refused(admin, query)
            if latest["requests"] >= total:
                return
            await asyncio.sleep(0.05)

    await poll()
    await asyncio.sleep(0.6)  # two more flush intervals: nothing more may come
    return await refused(admin, query)


def tally(requests: int, **by_reason: int) -> dict[str, Any]:
    return {"requests": requests, "by_reason": dict(sorted(by_reason.items()))}


async def test_each_kind_of_refusal_is_counted_by_reason_key_and_user(
    gateway: TestServer, admin: GatewayClient, db_path: str, key: str
) -> None:
    await clock_room(3600, 20)  # one hour's rows
    limited = await make_key(db_path, "bob", "slow", limits=KeyLimits(rpm=1))
    narrow = await make_key(db_path, "bob", "narrow", models=["qwen*"])
    gone = await make_key(db_path, "carol", "old")
    keys = {k["key_name"]: k for k in (await (await admin.get("/admin/keys")).json())["keys"]}
    assert (await admin.delete(f"/admin/keys/{keys['old']['id']}")).status == 200
    alice = key  # alice's laptop, a user key

    async def post(key: str | None, path: str = "/api/chat", **headers: str) -> int:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with aiohttp.ClientSession() as session:
            url = str(gateway.make_url(path))
            async with session.post(url, json=CHAT, headers=headers) as resp:
                return resp.status

    statuses = [
        await post(None),  # missing_key
        await post(None, Authorization="Basic abc"),  # malformed_key
        await post("not-a-key"),  # malformed_key
        await post(made_up_key()),  # unknown_key
        await post(gone),  # revoked_or_expired, carol's key
        await post(alice, "/api/pull"),  # admin_only, alice's key
        await post(narrow),  # model_not_allowed, bob's narrow
        await post(limited),  # served
        await post(limited),  # rate_limit, bob's slow
        await post(limited),  # rate_limit
    ]
    assert statuses == [401, 401, 401, 401, 401, 403, 403, 200, 429, 429]
    doc = await settled(admin, 9)
    assert doc == {
        **tally(
            9, missing_key=1, malformed_key=2, unknown_key=1, revoked_or_expired=1,
            admin_only=1, model_not_allowed=1, rate_limit=2,
        ),
        "per_user": [
            {"user": "alice", **tally(1, admin_only=1)},
            {"user": "bob", **tally(3, model_not_allowed=1, rate_limit=2)},
            {"user": "carol", **tally(1, revoked_or_expired=1)},
        ],
        "per_key": sorted(
            [
                {"key_id": keys["slow"]["id"], "user": "bob", "key_name": "slow",
                 **tally(2, rate_limit=2)},
                {"key_id": keys["narrow"]["id"], "user": "bob", "key_name": "narrow",
                 **tally(1, model_not_allowed=1)},
                {"key_id": keys["old"]["id"], "user": "carol", "key_name": "old",
                 **tally(1, revoked_or_expired=1)},
                {"key_id": _id_of(db_path, "alice", "laptop"), "user": "alice",
                 "key_name": "laptop", **tally(1, admin_only=1)},
            ],
            key=lambda k: k["key_id"],
        ),
        "without_key": tally(4, missing_key=1, malformed_key=2, unknown_key=1),
    }  # fmt: skip

    # The per-key and per-user views, /admin/usage and the stats' own filters agree.
    one_key = await (await admin.get(f"/admin/keys/{keys['slow']['id']}")).json()
    assert one_key["refused"]["requests"] == 2
    assert one_key["refused"]["by_reason"] == {"rate_limit": 2}
    bob = await (await admin.get("/admin/users/bob")).json()
    assert bob["refused"]["by_reason"] == {"model_not_allowed": 1, "rate_limit": 2}
    assert [k["key_name"] for k in bob["refused"]["per_key"]] == ["slow", "narrow"]
    page = await (await admin.get("/admin/usage?user=carol")).json()
    assert page["refused"]["requests"] == 1
    assert page["refused"]["per_key"][0]["key_name"] == "old"
    assert (await (await admin.get("/admin/usage?model=llama3.2")).json())["refused"] is None
    narrowed = await refused(admin, f"&key_id={keys['narrow']['id']}")
    assert narrowed["requests"] == 1 and narrowed["without_key"]["requests"] == 0
    # A key that is no admin sees its own refusals only.
    own = {"Authorization": f"Bearer {limited}"}
    async with (
        aiohttp.ClientSession(headers=own) as session,
        session.get(str(gateway.make_url("/admin/usage?user=carol"))) as resp,
    ):
        mine = await resp.json()
    assert mine["refused"]["by_reason"] == {"rate_limit": 2}
    # A period after the hour holds none of them; one inside it, all.
    later = (time.time() // 3600 + 1) * 3600
    assert (await refused(admin, f"&since={later}"))["requests"] == 0
    assert (await refused(admin, f"&since={time.time() - 1}"))["requests"] == 9


def _id_of(db_path: str, user: str, name: str) -> int:
    with closing(sqlite3.connect(db_path)) as db:
        row = db.execute(
            'SELECT id FROM keys WHERE "user" = ? AND name = ? AND revoked = 0', (user, name)
        ).fetchone()
    return int(row[0])


def _rows(db_path: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(
            'SELECT hour, reason, key_id, "user", key_name, requests FROM refusals_hourly'
        ).fetchall()


async def test_a_thousand_made_up_keys_make_one_row(
    gateway: TestServer, admin: GatewayClient, db_path: str
) -> None:
    hour_end = await clock_room(3600, 60)
    url = str(gateway.make_url("/api/tags"))
    async with aiohttp.ClientSession() as session:

        async def twenty() -> None:  # (misses that arrive together share one look)
            for _ in range(20):
                headers = {"Authorization": f"Bearer {made_up_key()}"}
                async with session.get(url, headers=headers) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["reason"] == "unknown_key"

        await asyncio.gather(*(twenty() for _ in range(50)))
    doc = await settled(admin, 1000)
    assert doc["without_key"] == tally(1000, unknown_key=1000)
    assert doc["requests"] == 1000
    assert await asyncio.to_thread(_rows, db_path) == [
        (int(hour_end) - 3600, "unknown_key", NO_KEY, "", "", 1000)
    ]


async def test_nothing_is_written_on_the_request_path(
    gateway: TestServer, admin: GatewayClient, db_path: str, key: str
) -> None:
    """While another connection holds the database's write lock (the gateway's writes
    wait out their busy timeout, 5 s), refusals are answered at once, every one; once
    the lock is gone they are counted."""
    await clock_room(3600, 60)
    db = await asyncio.to_thread(sqlite3.connect, db_path, check_same_thread=False)
    await asyncio.to_thread(db.execute, "BEGIN IMMEDIATE")  # the write lock, held
    slowest = 0.0
    try:
        url = str(gateway.make_url("/api/pull"))
        async with aiohttp.ClientSession() as session:
            for i in range(300):
                headers = [{}, {"Authorization": "Basic x"}, {"Authorization": f"Bearer {key}"}]
                started = time.monotonic()
                async with session.post(url, json={}, headers=headers[i % 3]) as resp:
                    assert resp.status in (401, 403)
                slowest = max(slowest, time.monotonic() - started)
        assert _rows_under_lock(db) == []  # none written while the lock is held
    finally:
        await asyncio.to_thread(db.rollback)
        await asyncio.to_thread(db.close)
    assert slowest < 1.0  # a write on the path would have waited 5 s
    doc = await settled(admin, 300)
    assert doc["by_reason"] == {"admin_only": 100, "malformed_key": 100, "missing_key": 100}


def _rows_under_lock(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM refusals_hourly").fetchall()


async def test_counts_survive_a_graceful_restart(
    aiohttp_server: AiohttpServer, settings: Settings, db_path: str, admin_key: str
) -> None:
    await clock_room(3600, 20)
    first = await aiohttp_server(create_app(settings))
    async with aiohttp.ClientSession() as session:
        for _ in range(7):
            async with session.get(str(first.make_url("/api/tags"))) as resp:
                assert resp.status == 401
    await first.close()  # at once: the counts are at most a flush interval old
    second = await aiohttp_server(create_app(settings))
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(str(second.make_url("/admin/stats?parts=refused"))) as resp,
    ):
        doc = (await resp.json())["refused"]
    assert doc["without_key"] == tally(7, missing_key=7)
    assert doc["requests"] == 7


class _AwayStore(Store):
    """A store whose database refuses refusal batches while `away` is set."""

    away = True

    async def add_refusals(self, rows: Any, batch: str) -> bool:
        if self.away:
            raise StoreError("the database is away")
        return await super().add_refusals(rows, batch)


async def test_counts_wait_in_a_file_while_the_database_is_away(
    tmp_path: Path, db_path: str
) -> None:
    """Counts the database cannot take are saved beside the journal at close, written by
    the next start, and written once however often that start is repeated."""
    store = await Store.open(db_path)
    store.__class__ = _AwayStore
    try:
        counts = RefusalCounts()
        writer = RefusalWriter(counts, tmp_path, "run1")
        for _ in range(5):
            counts.count(Refused.UNKNOWN_KEY, None)
        assert not await writer.flush(store)
        counts.count(Refused.MISSING_KEY, None)
        assert not await writer.flush(store, closing=True)
        saved = list(tmp_path.glob("refusals-*.json"))
        assert [p.name for p in saved] == ["refusals-run1.json"]
        copy = saved[0].read_bytes()
        _AwayStore.away = False
        await RefusalWriter(RefusalCounts(), tmp_path, "run2").replay(store)
        assert list(tmp_path.glob("refusals-*.json")) == []
        (tmp_path / "refusals-run1.json").write_bytes(copy)  # a replay killed before unlink
        await RefusalWriter(RefusalCounts(), tmp_path, "run3").replay(store)
        rows = await asyncio.to_thread(_rows, db_path)
        assert sorted((r[1], r[5]) for r in rows) == [("missing_key", 1), ("unknown_key", 5)]
    finally:
        _AwayStore.away = True
        await store.close()


async def test_two_gateways_on_one_postgresql_add_up(
    aiohttp_server: AiohttpServer, upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    await clock_room(3600, 20)
    base = str(upstream.make_url("")).rstrip("/")
    gateways = [
        await aiohttp_server(
            create_app(
                Settings(
                    ollama_base_url=base,
                    database_url=pg_url,
                    token_db_path=str(tmp_path / f"g{i}.db"),
                    usage_journal_dir=str(tmp_path / f"journal{i}"),
                )
            )
        )
        for i in (1, 2)
    ]
    async with aiohttp.ClientSession() as session:
        for n, gateway in zip((3, 4), gateways, strict=True):
            for _ in range(n):
                headers = {"Authorization": f"Bearer {made_up_key()}"}
                async with session.get(str(gateway.make_url("/api/tags")), headers=headers) as r:
                    assert r.status == 401
    for gateway in gateways:
        await gateway.close()
    store = await Store.open(pg_url)
    try:
        doc = await store.refused_summary(since=time.time() - 60)
    finally:
        await store.close()
    assert doc["without_key"] == tally(7, unknown_key=7)
    assert doc["requests"] == 7 and doc["per_key"] == []


def test_counting_is_bounded_and_keeps_every_refusal() -> None:
    """Past MAX_ROWS rows, a known key's refusal counts under NO_KEY: rows stay bounded,
    the count by reason stays exact."""
    counts = RefusalCounts()
    saved, refusals.MAX_ROWS = refusals.MAX_ROWS, 3
    try:
        base = bootstrap_record("aig_" + "a" * 43)
        for key_id in range(10):
            counts.count(Refused.RATE_LIMIT, dataclasses.replace(base, id=key_id + 1))
        rows = counts.rows(counts.take())
        assert len(rows) == 4
        assert sum(r.requests for r in rows) == 10
        assert next(r for r in rows if r.key_id == NO_KEY).requests == 7
        # A batch waiting for the database is bounded the same way.
        waiting = refusals._Batch("b", {})
        waiting.merge(rows)
        waiting.merge([r._replace(key_id=r.key_id + 100) for r in rows if r.key_id != NO_KEY])
        assert len(waiting.rows) == 4
        assert sum(r.requests for r in waiting.rows.values()) == 13
    finally:
        refusals.MAX_ROWS = saved


OVERVIEW_JS = Path(__file__).resolve().parent.parent / "aigateway" / "ui" / "static" / "overview.js"


async def test_the_overview_reads_the_refused_counts_it_shows(
    gateway: TestServer, admin: GatewayClient, key: str
) -> None:
    """Without a browser: the stats request the Overview makes (as overview.js writes it)
    answers the refused fields its tables read, exactly."""
    found = re.search(r"/stats\?since=\$\{weekAgo\}&parts=([a-z_0-9,]+)`", OVERVIEW_JS.read_text())
    assert found is not None, "the Overview's stats request is not where this test looks"
    assert "refused" in found.group(1).split(",")
    await clock_room(3600, 20)
    async with aiohttp.ClientSession() as session:
        url = str(gateway.make_url("/api/pull"))
        for headers in ({}, {}, {"Authorization": f"Bearer {key}"}):
            async with session.post(url, json={}, headers=headers) as resp:
                assert resp.status in (401, 403)
    week_ago = int(time.time()) - 7 * 86400
    query = f"/admin/stats?since={week_ago}&parts={found.group(1)}"
    await settled(admin, 3)
    doc = (await (await admin.get(query)).json())["refused"]
    assert doc["requests"] == 3
    assert doc["by_reason"] == {"admin_only": 1, "missing_key": 2}
    assert [(u["user"], u["requests"], u["by_reason"]) for u in doc["per_user"]] == [
        ("alice", 1, {"admin_only": 1})
    ]
    assert doc["without_key"] == tally(2, missing_key=2)


async def test_a_database_of_the_release_before_upgrades_in_place(database: str) -> None:
    """A database at revision 0017 with a key and a usage record opens at the head with both
    as they were, and takes and adds refusal counts (an upsert that adds)."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(17))
        async with engine.begin() as conn:
            await conn.run_sync(old_key)
            await conn.run_sync(old_usage_record)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        assert [r.key_name for r in await store.usage_rows()] == ["old"]
        assert (await store.get_key(1)).name == "old"
        hour = int(time.time()) // 3600 * 3600
        row = RefusalRow(hour, "rate_limit", 1, "alice", "old", 2)
        assert await store.add_refusals([row], "refusals-a-000001")
        assert await store.add_refusals([row._replace(requests=3)], "refusals-b-000001")
        assert not await store.add_refusals([row], "refusals-a-000001")  # once per name
        doc = await store.refused_summary(since=hour)
    finally:
        await store.close()
    assert doc["per_key"] == [
        {"key_id": 1, "user": "alice", "key_name": "old", **tally(5, rate_limit=5)}
    ]
    async with engine.connect() as conn:
        revision = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
    await engine.dispose()
    assert revision == [(HEAD,)]


async def test_a_session_whose_key_expired_counts_against_its_key(
    gateway: TestServer, admin: GatewayClient, db_path: str
) -> None:
    await clock_room(3600, 20)
    key = await make_key(db_path, "fay", "pc", expires_at=time.time() + 1.5)
    url = str(gateway.make_url("")).rstrip("/")
    same = {"X-Requested-With": "aigateway"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "/ui/session", json={"key": key}, headers=same) as resp:
            assert resp.status == 200
        await asyncio.sleep(1.6)
        async with session.get(url + "/admin/me") as resp:
            assert resp.status == 401
            assert "expired: sign in again" in (await resp.json())["error"]
    doc = await settled(admin, 1)
    assert [(k["user"], k["key_name"], k["by_reason"]) for k in doc["per_key"]] == [
        ("fay", "pc", {"revoked_or_expired": 1})
    ]
    assert doc["without_key"]["requests"] == 0


async def test_counts_waiting_for_a_locked_database_outlive_a_sigkill(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> None:
    """The database locked by another writer: the counts wait in their file beside the
    journal; the gateway is killed; the next start writes them, once."""
    await clock_room(3600, 60)
    gateway = await start_gateway(upstream, db_path, tmp_path)
    folder = Path(db_path + ".usage-journal")
    db = await asyncio.to_thread(sqlite3.connect, db_path, check_same_thread=False)
    await asyncio.to_thread(db.execute, "BEGIN IMMEDIATE")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(40):
                async with session.get(gateway.url + "/api/tags") as resp:
                    assert resp.status == 401

        def saved() -> int:
            total = 0
            for path in folder.glob("refusals-*.json"):
                with contextlib.suppress(ValueError):  # (replaced whole, never torn)
                    total += sum(row[-1] for row in orjson.loads(path.read_bytes())[1])
            return total

        await eventually(lambda: saved() == 40, timeout=20)
        gateway.process.kill()
        await asyncio.to_thread(gateway.process.wait, 10)
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
        await asyncio.to_thread(db.rollback)
        await asyncio.to_thread(db.close)
    assert await asyncio.to_thread(_rows, db_path) == []
    restarted = await start_gateway(upstream, db_path, tmp_path)
    await restarted.stop()
    again = await start_gateway(upstream, db_path, tmp_path)  # nothing left to add twice
    await again.stop()
    rows = await asyncio.to_thread(_rows, db_path)
    assert [(r[1], r[2], r[5]) for r in rows] == [("missing_key", NO_KEY, 40)]
    assert list(folder.glob("refusals-*")) == []
