"""Key ids are never given out twice, on SQLite and on PostgreSQL, and a key's dashboard
sessions end when it is revoked or purged: a new key inherits nothing of an old one."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway.db import schema
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.records import UsageQuery, UsageRecord

from .conftest import make_key
from .helpers import at_revision

SAME = {"X-Requested-With": "aigateway"}


def _usage(key_id: int, cost: int = 7_000_000) -> UsageRecord:
    return UsageRecord(
        time.time(), key_id, "alice", "laptop", "POST", "/api/chat", "llama3.2:latest", 200,
        10, 20, 12.5, 1.5, 80, 400, False, cost=cost,
    )  # fmt: skip


async def test_a_purged_keys_id_is_never_given_again(database: str) -> None:
    store = await Store.open(database)
    try:
        old, _ = await store.create_key("alice", "laptop")
        await store.insert_usage([_usage(old.id)])
        await store.create_session("a" * 64, old.id, time.time() + 3600)
        await store.revoke_key("alice", "laptop")
        assert await store.find_session("a" * 64) is None  # revoked: its sessions end
        # A session another gateway made in the moment before (a race), ended by the purge.
        await store.create_session("b" * 64, old.id, time.time() + 3600)
        assert await store.purge_revoked("alice", "laptop") == 1
        assert await store.find_session("b" * 64) is None
        new, _ = await store.create_key("dave", "desk")
        assert new.id > old.id
        assert await store.usage_rows(key_id=new.id) == []
        assert await store.spend_since(f"key:{new.id}", 0) == 0
        assert new.id not in await store.tokens_since(0)
        assert await store.usage_summary(["key_id"], UsageQuery(key_id=new.id)) == []
    finally:
        await store.close()


async def test_disabling_a_user_ends_its_keys_sessions(database: str) -> None:
    store = await Store.open(database)
    try:
        mine, _ = await store.create_key("alice", "laptop")
        other, _ = await store.create_key("bob", "phone")
        await store.create_session("a" * 64, mine.id, time.time() + 3600)
        await store.create_session("b" * 64, other.id, time.time() + 3600)
        await store.set_user_disabled("alice", True)
        assert await store.find_session("a" * 64) is None
        assert await store.find_session("b" * 64) is not None
    finally:
        await store.close()


async def test_an_old_keys_session_never_signs_in_as_a_new_key(
    gateway: TestServer, admin: TestClient[Request, None], db_path: str
) -> None:
    """The attack: sign in with a key, have it revoked and purged, keep the cookie; the
    next key made (an admin's) must not be what the cookie now opens."""
    secret = await make_key(db_path, "eve", "laptop")
    url = str(gateway.make_url("/ui/session"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"key": secret}, headers=SAME) as resp,
    ):
        assert resp.status == 200
        cookie = resp.cookies["aigateway_session"].value
    store = await Store.open(db_path)
    try:
        old = await store.find_active_key("eve", "laptop")
        await store.revoke_key_id(old.id)
        await store.purge_revoked("eve", "laptop")
    finally:
        await store.close()
    new_admin = {"user": "root", "name": "new-admin", "role": "admin"}
    made = await admin.post("/admin/keys", json=new_admin)
    assert made.status == 201
    assert (await made.json())["id"] > old.id
    async with (
        aiohttp.ClientSession(cookies={"aigateway_session": cookie}) as session,
        session.get(str(gateway.make_url("/admin/me"))) as resp,
    ):
        assert resp.status == 401, await resp.text()


def _key_row(key_id: int) -> dict[str, object]:
    return {
        "id": key_id, "user": "alice", "name": f"key{key_id}", "key_hash": f"{key_id:064d}",
        "prefix": "aig_x", "role": "user", "created_at": 1.0, "revoked": 1, "user_id": None,
    }  # fmt: skip


def _holding(where: str, key_id: int) -> tuple[object, dict[str, object]]:
    """A row of `where` that holds `key_id`."""
    now = time.time()
    if where == "usage":
        return schema.usage, {
            "ts": now, "key_id": key_id, "user": "alice", "key_name": "gone", "method": "POST",
            "route": "/api/chat", "status": 200, "duration_ms": 1.0, "bytes_in": 1,
            "bytes_out": 1,
        }  # fmt: skip
    if where == "usage_hourly":
        counts = dict.fromkeys(schema.rollup_counts(), 0)
        return schema.usage_hourly, {
            "dim": "key", "hour": 0, "value": str(key_id), **counts, "duration_sum": 0.0
        }  # fmt: skip
    if where == "sessions":
        return schema.sessions, {
            "id_hash": "c" * 64, "key_id": key_id, "created_at": now, "seen_at": now,
            "expires_at": now + 3600,
        }  # fmt: skip
    if where == "limit_counters":
        columns = [c.name for c in schema.limit_counters.columns if c.name != "key_id"]
        return schema.limit_counters, {"key_id": key_id, **dict.fromkeys(columns, 0)}
    assert where == "budget_spend"
    return schema.budget_spend, {
        "owner": f"key:{key_id}", "period": "total", "period_start": 0, "spent": 5,
        "reserved": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "where", ["usage", "usage_hourly", "sessions", "limit_counters", "budget_spend"]
)
async def test_an_upgraded_database_continues_after_every_key_id_it_holds(
    database: str, where: str
) -> None:
    """A database of the release before, whose keys 2 and 3 were purged and whose highest
    key id (7) is left only in `where`: after the upgrade the next key gets 8."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(16))
        async with engine.begin() as conn:
            await conn.execute(insert(schema.keys), [_key_row(n) for n in (1, 2, 3)])
            await conn.execute(delete(schema.keys).where(schema.keys.c.id > 1))
            table, row = _holding(where, 7)
            await conn.execute(insert(table).values(row))  # type: ignore[arg-type]
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        kept = await store.get_key(1)  # the rows the table had are all there
        assert (kept.name, kept.revoked) == ("key1", True)
        new, _ = await store.create_key("alice", "fresh")
        assert new.id == 8
        again, _ = await store.create_key("alice", "fresher")
        assert again.id == 9
    finally:
        await store.close()
