"""Self-service keys (SELF_SERVICE_KEYS): a user-role key makes keys of its own user
through /admin/me/keys, never more than itself, at most N active at once (also when N
creates race, on both databases), revokes only its own, and takes them with it when it
is revoked. On SQLite and PostgreSQL, through the real API."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway.access.allowlist import uncovered
from aigateway.app import create_app
from aigateway.db import schema
from aigateway.db.keyrows import Creator
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.records import (
    Budget,
    CapReachedError,
    KeyLimits,
    KeyRecord,
    UsageRecord,
)
from aigateway.settings import Settings

from .conftest import GatewayClient
from .helpers import at_revision

DAY = 86400
CAP = 2
EXPIRES = time.time() + 10 * DAY
BUDGET = Budget(1_000_000, "monthly", 80)  # 1 USD a month
SPENT_NANO = 250_000 * 1000  # a quarter of it, spent


@pytest.fixture
def db_path(database: str) -> str:
    return database  # (a SQLite file or a PostgreSQL URL: every test runs on both)


@pytest.fixture
def settings(upstream: TestServer, db_path: str, tmp_path: Path) -> Settings:
    where = {"database_url": db_path} if "://" in db_path else {"token_db_path": db_path}
    return Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"),
        usage_journal_dir=str(tmp_path / "journal"),
        self_service_keys=CAP,
        default_rph=600,
        **where,  # type: ignore[arg-type]
    )


@pytest.fixture
async def key(db_path: str) -> str:
    """The maker: a user key that expires, may use llama3* only, has limits and a budget
    of its own of which a quarter is spent."""
    store = await Store.open(db_path)
    try:
        record, secret = await store.create_key(
            "alice", "laptop", "user", EXPIRES, KeyLimits(rpm=60), ["llama3*"], BUDGET
        )
        await store.insert_usage([_spent(record, SPENT_NANO)])
    finally:
        await store.close()
    return secret


def _spent(record: KeyRecord, cost: int) -> UsageRecord:
    return UsageRecord(
        ts=time.time(), key_id=record.id, user=record.user, key_name=record.name,
        method="POST", route="/chat", model="llama3:latest", status=200,
        prompt_tokens=1, completion_tokens=1, duration_ms=1.0, ttfb_ms=1.0,
        bytes_in=1, bytes_out=1, client_gone=False, cost=cost,
    )  # fmt: skip


async def _as(aiohttp_client: AiohttpClient, gateway: BaseTestServer, secret: str) -> GatewayClient:
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {secret}"})


async def _refused(client: GatewayClient, status: int, says: str, **body: object) -> None:
    async with client.post("/admin/me/keys", json={"name": "x", **body}) as resp:
        doc = await resp.json()
        assert (resp.status, set(doc)) == (status, {"error"}), (body, doc)
        assert says in doc["error"], (body, doc)


async def test_a_key_makes_a_key_no_more_than_itself(
    client: GatewayClient,
    admin: GatewayClient,
    aiohttp_client: AiohttpClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = await (await client.get("/admin/me")).json()
    assert me["self_service_keys"] == CAP
    caplog.set_level(logging.INFO, "aigateway")
    resp = await client.post("/admin/me/keys", json={"name": "ci"})
    made = await resp.json()
    assert resp.status == 201, made
    # Not given: the maker's own expiry, allow-list and limits, and what remains of its budget.
    assert made["user"] == "alice" and made["role"] == "user"
    assert made["created_by"] == me["key"]["id"]
    assert made["expires"] == me["key"]["expires"]
    assert made["models"] == ["llama3*"] and made["rpm"] == 60 and made["rph"] is None
    assert made["budget"] == {"amount": 750_000, "period": "monthly", "alert_percent": 80}
    # Given, each within the maker's.
    narrower = {
        "name": "phone", "models": ["llama3.1*", "llama3:8b"], "rpm": 10, "rph": 100,
        "expires_days": 1, "budget": {"amount": 5, "period": "total"},
    }  # fmt: skip
    resp = await client.post("/admin/me/keys", json=narrower)
    second = await resp.json()
    assert resp.status == 201, second
    assert (second["models"], second["rpm"], second["rph"]) == (["llama3.1*", "llama3:8b"], 10, 100)
    assert second["budget"] == {"amount": 5, "period": "total", "alert_percent": None}
    # The new key works, and makes no keys of its own.
    child = await _as(aiohttp_client, client.server, made["key"])
    child_me = await (await child.get("/admin/me")).json()
    assert child_me["key"]["key_name"] == "ci" and child_me["self_service_keys"] is None
    await _refused(child, 403, "cannot make keys itself")
    # Listed for its maker; seen by an admin with its maker.
    own = await (await client.get("/admin/me/keys")).json()
    assert (own["allowed"], own["active"]) == (CAP, 2)
    assert [k["key_name"] for k in own["keys"]] == ["ci", "phone"]
    assert all("key" not in k for k in own["keys"])  # (the secret: shown once, at creation)
    seen = await (await admin.get(f"/admin/keys/{made['id']}")).json()
    assert seen["created_by"] == me["key"]["id"]
    # Logged with its maker, never with a secret.
    lines = [r.getMessage() for r in caplog.records if "self-service: key" in r.getMessage()]
    prefix = me["key"]["prefix"]
    assert len(lines) == 2 and all(f"key {me['key']['id']} ({prefix}...)" in x for x in lines)
    assert made["key"] not in caplog.text and second["key"] not in caplog.text


async def test_every_way_past_its_maker_is_refused(client: GatewayClient) -> None:
    later = EXPIRES + DAY
    tries: list[tuple[int, str, dict[str, object]]] = [
        (403, "role must be user", {"role": "admin"}),
        (403, "of its own user", {"user": "bob"}),
        (403, "no later than", {"expires_at": later}),
        (403, "no later than", {"expires_at": None}),
        (403, "no later than", {"expires_days": 30}),
        (403, "not within them: *", {"models": ["*"]}),
        (403, "not within them: qwen*", {"models": ["llama3", "qwen*"]}),
        (403, "not within them: llama3*", {"models": None}),
        (403, "not within them: *-cloud", {"models": ["*-cloud"]}),
        (403, "not within them: llama3:70b-cloud", {"models": ["llama3:70b-cloud"]}),
        (403, "not within them: *:8b", {"models": ["*:8b"]}),
        (403, "rpm must be from 1 to this key's own, 60", {"rpm": 61}),
        (403, "rpm must be from 1", {"rpm": 0}),  # (0: no limit)
        (403, "rph must be from 1 to this key's own, 600", {"rph": 0}),  # (the default's)
        (403, "at most what remains", {"budget": {"amount": 750_001, "period": "monthly"}}),
        (403, "budget must be set", {"budget": None}),
        (403, "period must be monthly", {"budget": {"amount": 1, "period": "daily"}}),
        (400, "models must be a list", {"models": "llama3"}),
        (400, "rpm must be 0", {"rpm": -1}),
        (400, "rpm must be a whole number", {"rpm": "10"}),
        (400, "key name must not be empty", {"name": ""}),
        (400, "name must be a string", {"name": 5}),
        (400, "unknown field", {"created_by": 1}),
        (400, "expires_at must be a Unix time", {"expires_at": "soon"}),
    ]
    for status, says, body in tries:
        await _refused(client, status, says, **body)
    own = await (await client.get("/admin/me/keys")).json()
    assert own["keys"] == []  # (nothing refused was written)


async def test_at_most_n_active_and_each_name_once(client: GatewayClient) -> None:
    made = []
    for name in ("a", "b"):
        resp = await client.post("/admin/me/keys", json={"name": name})
        assert resp.status == 201
        made.append(await resp.json())
    await _refused(client, 409, f"SELF_SERVICE_KEYS={CAP}")
    resp = await client.delete(f"/admin/me/keys/{made[0]['id']}")
    assert resp.status == 200 and (await resp.json())["status"] == "revoked"
    await _refused(client, 409, "already has an active key named 'b'", name="b")
    assert (await client.post("/admin/me/keys", json={"name": "c"})).status == 201
    own = await (await client.get("/admin/me/keys")).json()
    assert [(k["key_name"], k["status"]) for k in own["keys"]] == [
        ("a", "revoked"), ("b", "active"), ("c", "active"),
    ]  # fmt: skip


async def test_n_creates_at_once_make_no_more_than_n(client: GatewayClient, db_path: str) -> None:
    answers = await asyncio.gather(
        *(client.post("/admin/me/keys", json={"name": f"k{i}"}) for i in range(12))
    )
    statuses = sorted(resp.status for resp in answers)
    assert statuses == [201] * CAP + [409] * (12 - CAP)
    # Two gateways' stores at once (two connection pools), past the API's own order.
    stores = [await Store.open(db_path) for _ in range(2)]
    try:
        maker = next(k for k in await stores[0].list_keys() if k.name == "laptop")
        cap = CAP + 3
        tries = [
            stores[i % 2].create_key(
                "alice", f"s{i}", creator=Creator(maker.id, cap, lambda _now: None)
            )
            for i in range(10)
        ]
        results = await asyncio.gather(*tries, return_exceptions=True)
        made = [r for r in results if isinstance(r, tuple)]
        assert len(made) == 3, results
        assert all(isinstance(r, CapReachedError) for r in results if not isinstance(r, tuple))
        active = [k for k in await stores[1].keys_made_by(maker.id) if k.status() == "active"]
        assert len(active) == cap
    finally:
        for store in stores:
            await store.close()


async def test_a_key_revokes_only_its_own(
    client: GatewayClient, admin: GatewayClient, aiohttp_client: AiohttpClient, db_path: str
) -> None:
    store = await Store.open(db_path)
    try:
        _, bob_secret = await store.create_key("bob", "pc")
        stranger, _ = await store.create_key("alice", "desk")  # (same user, made by an admin)
    finally:
        await store.close()
    bob = await _as(aiohttp_client, client.server, bob_secret)
    bobs = await (await bob.post("/admin/me/keys", json={"name": "bob-ci"})).json()
    mine = await (await client.post("/admin/me/keys", json={"name": "ci"})).json()
    for other in (bobs["id"], stranger.id, mine["created_by"], 999_999):
        async with client.delete(f"/admin/me/keys/{other}") as resp:
            doc = await resp.json()
            assert resp.status == 403 and "may revoke only keys it made" in doc["error"], doc
    assert (await bob.delete(f"/admin/me/keys/{mine['id']}")).status == 403
    assert (await client.delete("/admin/me/keys/x1")).status == 400
    listed = await (await admin.get("/admin/keys")).json()
    assert {k["key_name"]: k["status"] for k in listed["keys"]}["bob-ci"] == "active"
    # An admin key uses /admin/keys, not self-service.
    async with admin.post("/admin/me/keys", json={"name": "x"}) as resp:
        assert resp.status == 403 and "POST /admin/keys" in (await resp.json())["error"]


async def test_its_keys_go_with_their_maker(
    client: GatewayClient, admin: GatewayClient, aiohttp_client: AiohttpClient
) -> None:
    me = (await (await client.get("/admin/me")).json())["key"]
    child = await (await client.post("/admin/me/keys", json={"name": "ci"})).json()
    # An earlier expiry of the maker is its keys' too.
    sooner = time.time() + DAY
    resp = await admin.patch(f"/admin/keys/{me['id']}", json={"expires_at": sooner})
    assert resp.status == 200
    seen = await (await admin.get(f"/admin/keys/{child['id']}")).json()
    assert seen["expires"] == (await resp.json())["expires"]
    # Revoked with it: the child's key stops working at once.
    user = await _as(aiohttp_client, client.server, child["key"])
    assert (await user.get("/admin/me")).status == 200
    assert (await admin.delete(f"/admin/keys/{me['id']}")).status == 200
    assert (await user.get("/admin/me")).status == 401
    seen = await (await admin.get(f"/admin/keys/{child['id']}")).json()
    assert seen["status"] == "revoked"


async def test_off_unless_set(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
) -> None:
    off = dataclasses.replace(settings, self_service_keys=0)
    gateway = await aiohttp_server(create_app(off))
    client = await _as(aiohttp_client, gateway, key)
    assert (await (await client.get("/admin/me")).json())["self_service_keys"] is None
    await _refused(client, 403, "SELF_SERVICE_KEYS=0")
    async with client.get("/admin/me/keys") as resp:
        assert resp.status == 403
    # A key made while it was on can still be revoked by its maker.
    store = await Store.open(settings.database)
    try:
        maker = next(k for k in await store.list_keys() if k.name == "laptop")
        made, _ = await store.create_key(
            "alice", "old", creator=Creator(maker.id, 1, lambda _now: None)
        )
    finally:
        await store.close()
    async with client.delete(f"/admin/me/keys/{made.id}") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "revoked"


def test_wider_is_decided_by_the_matching_rules() -> None:
    narrower = ["llama3.1*", "Llama3:8B", "llama3?x*", "registry.ollama.ai/library/llama3*"]
    assert uncovered(narrower, ["llama3*"]) == []
    assert uncovered(["*", "qwen*", "*:8b", "*-cloud", "llama3:70b-cloud"], ["llama3*"]) == [
        "*", "qwen*", "*:8b", "*-cloud", "llama3:70b-cloud",
    ]  # fmt: skip
    # `*` allows no cloud model: a cloud pattern or name is wider than it.
    assert uncovered(["*-cloud", "gpt-oss:120b-cloud", "gpt*"], ["*"]) == [
        "*-cloud", "gpt-oss:120b-cloud",
    ]  # fmt: skip
    assert uncovered(["gpt-oss:120b-cloud", "gpt*-cloud"], ["*-cloud"]) == ["gpt*-cloud"]
    assert uncovered(["llama3", "llama3:latest"], ["llama3"]) == []
    assert uncovered(["llama3:8b"], ["llama3"]) == ["llama3:8b"]


async def test_a_database_of_the_release_before_keeps_its_keys(database: str) -> None:
    """Revision 0018 with a key opens at 0019: the key as it was, made by an admin."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(18))
        async with engine.begin() as conn:
            await conn.execute(
                insert(schema.keys).values(
                    id=7, user="alice", name="old", key_hash="1" * 64, prefix="aig_x",
                    role="user", created_at=1.0, revoked=0,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        old = await store.get_key(7)
        assert (old.name, old.created_by) == ("old", None)
        made, _ = await store.create_key("alice", "new", creator=Creator(7, 1, lambda _now: None))
        assert made.created_by == 7
    finally:
        await store.close()


async def test_another_site_cannot_make_keys_with_a_signed_in_browser(
    client: GatewayClient, key: str
) -> None:
    """By session cookie (the dashboard), a create needs the page's own header and origin:
    a form or script on another site gets 403 and makes nothing."""
    url = str(client.server.make_url("")).rstrip("/")
    same = {"X-Requested-With": "aigateway"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "/ui/session", json={"key": key}, headers=same) as resp:
            assert resp.status == 200
        for headers in ({}, {**same, "Origin": "https://evil.example"}):
            async with session.post(
                url + "/admin/me/keys", json={"name": "stolen"}, headers=headers
            ) as resp:
                assert resp.status == 403, headers
        async with session.post(
            url + "/admin/me/keys", json={"name": "mine"}, headers=same
        ) as resp:
            assert resp.status == 201
    own = await (await client.get("/admin/me/keys")).json()
    assert [k["key_name"] for k in own["keys"]] == ["mine"]
