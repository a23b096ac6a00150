"""Priority classes where the gateway queues: the queue alone (classes, fairness within a
class, the age boost on an injected clock, leaving, timeout), and the class a key gets."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.db import schema
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.errors import ServiceUnavailable
from aigateway.records import PRIORITIES
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import upstreams_from_file
from aigateway.upstreams.queue import AGE_BOOST_S, FairQueue

from .conftest import make_key
from .helpers import at_revision, eventually, old_key
from .test_cli_flags import keys_in, run
from .test_cli_menu import DOWN, ENTER, TO_CHANGE, TO_EXIT, UP, menu

HIGH, NORMAL, LOW = PRIORITIES["high"], PRIORITIES["normal"], PRIORITIES["low"]


@dataclass(frozen=True)
class Gpu:
    name: str


GPU, OTHER = Gpu("gpu"), Gpu("other")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Queued:
    """A queue on an injected clock, and the requests it served, in order."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.clock = Clock()
        self.queue: FairQueue[Gpu] = FairQueue(timeout, clock=self.clock)
        self.served: list[str] = []
        self.released: list[Gpu] = []

    def enqueue(
        self, label: str, key_id: int, priority: int, on: tuple[Gpu, ...] = (GPU,)
    ) -> asyncio.Task[Gpu]:
        async def waiting() -> Gpu:
            upstream = await self.queue.wait(key_id, on, self.released.append, priority)
            self.served.append(label)
            return upstream

        return asyncio.create_task(waiting())

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def free(self, times: int, upstream: Gpu = GPU) -> None:
        """Free a slot `times` times, one at a time, letting each served waiter run."""
        for _ in range(times):
            assert self.queue.hand_over(upstream)
            await self.settle()


async def test_a_freed_slot_goes_to_the_highest_class_first() -> None:
    q = Queued()
    tasks = [q.enqueue("low", 1, LOW), q.enqueue("normal", 2, NORMAL)]
    await q.settle()
    tasks.append(q.enqueue("high", 3, HIGH))  # arrives last
    await q.settle()
    assert len(q.queue) == 3 and q.queue.waiting() == {"gpu": 3}
    await q.free(3)
    assert q.served == ["high", "normal", "low"]
    assert not q.queue.hand_over(GPU) and len(q.queue) == 0
    await asyncio.gather(*tasks)


async def test_keys_of_one_class_take_turns() -> None:
    q = Queued()
    tasks = [q.enqueue(f"a{n}", 1, HIGH) for n in range(4)]
    await q.settle()
    tasks += [q.enqueue("b0", 2, HIGH), q.enqueue("c0", 3, HIGH), q.enqueue("low", 4, LOW)]
    await q.settle()
    await q.free(7)
    # a0 (first), then b and c before a's other three; low only when no high waits
    assert q.served == ["a0", "b0", "c0", "a1", "a2", "a3", "low"]
    await asyncio.gather(*tasks)


async def test_a_waiter_only_takes_an_upstream_it_can_use() -> None:
    q = Queued()
    tasks = [q.enqueue("high-other", 1, HIGH, on=(OTHER,)), q.enqueue("low-gpu", 2, LOW)]
    await q.settle()
    await q.free(1)
    assert q.served == ["low-gpu"]
    await q.free(1, OTHER)
    await asyncio.gather(*tasks)


async def test_a_lower_class_waits_at_most_the_age_boost_behind_higher_ones() -> None:
    q = Queued()
    low = q.enqueue("low", 1, LOW)
    await q.settle()
    highs = [q.enqueue(f"h{n}", 2, HIGH) for n in range(6)]
    await q.settle()
    q.clock.now += AGE_BOOST_S - 0.5  # not yet due: high first
    await q.free(2)
    assert q.served == ["h0", "h1"]
    q.clock.now += 0.5  # low has waited AGE_BOOST_S: it goes before the high ones
    await q.free(1)
    assert q.served == ["h0", "h1", "low"]
    # the high ones that arrived later, once due themselves, are served oldest first
    q.clock.now += AGE_BOOST_S
    late = q.enqueue("normal-late", 3, NORMAL)  # higher than none of them, not due
    await q.settle()
    await q.free(5)
    assert q.served[3:] == ["h2", "h3", "h4", "h5", "normal-late"]
    await asyncio.gather(low, late, *highs)


async def test_with_every_key_normal_the_order_is_the_fair_queues() -> None:
    q = Queued()
    tasks = [q.enqueue(f"a{n}", 1, NORMAL) for n in range(3)] + [q.enqueue("b0", 2, NORMAL)]
    await q.settle()
    q.clock.now += 10 * AGE_BOOST_S  # all overdue: one class keeps its own order
    await q.free(4)
    assert q.served == ["a0", "b0", "a1", "a2"]
    await asyncio.gather(*tasks)


async def test_a_client_that_leaves_leaves_its_class() -> None:
    q = Queued()
    leaving = q.enqueue("leaves", 1, HIGH)
    staying = q.enqueue("stays", 2, LOW)
    await q.settle()
    leaving.cancel()
    await q.settle()
    assert len(q.queue) == 1 and q.queue.waiting() == {"gpu": 1}
    q.clock.now += 2 * AGE_BOOST_S
    await q.free(1)
    assert q.served == ["stays"] and await staying is GPU
    assert q.released == []


async def test_a_waiter_of_any_class_times_out() -> None:
    q = Queued(timeout=0.05)
    with pytest.raises(ServiceUnavailable, match="UPSTREAM_QUEUE_TIMEOUT"):
        await q.enqueue("never", 1, HIGH)
    assert len(q.queue) == 0 and not q.queue.hand_over(GPU)


# --- through a gateway -----------------------------------------------------------------


async def test_a_high_key_is_served_before_earlier_queued_low_ones(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str
) -> None:
    """One Ollama that takes one request at a time: a batch user made low and an
    interactive key made high through the admin API; the high request, queued last, is
    served next, and the API shows each key's class."""
    fake = FakeOllama(slow_interval=0.05)
    server = await aiohttp_server(fake.app())
    path = Path(db_path).with_name("upstreams.toml")
    url = str(server.make_url("")).rstrip("/")
    path.write_text(f'[[upstream]]\nname = "gpu"\nurl = "{url}"\nmax_concurrent = 1\n')
    settings = Settings(token_db_path=db_path, upstreams=upstreams_from_file(str(path), {}))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    client = await aiohttp_client(create_app(settings))
    as_admin = {"Authorization": f"Bearer {admin_key}"}

    async def admin(method: str, url: str, body: dict[str, Any]) -> Any:
        resp = await client.request(method, f"/admin{url}", json=body, headers=as_admin)
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()

    user = await admin("POST", "/users", {"user": "batch", "priority": "low"})
    assert user["priority"] == "low"
    batch = await admin("POST", "/keys", {"user": "batch", "name": "embedder"})
    assert (batch["priority"], batch["queue_class"]) == (None, "low")  # its user's
    chat = await admin("POST", "/keys", {"user": "ann", "name": "chat"})
    assert chat["queue_class"] == "normal"  # nobody said: normal
    chat_key = chat["key"]
    chat = await admin("PATCH", f"/keys/{chat['id']}", {"priority": "high"})
    assert (chat["priority"], chat["queue_class"]) == ("high", "high")

    async def run(key: str, label: str) -> int:
        body = {"model": "slow", "messages": [{"role": "user", "content": label}]}
        auth = {"Authorization": f"Bearer {key}"}
        async with client.post("/api/chat", json=body, headers=auth) as resp:
            await resp.read()
            return resp.status

    pool = client.app[RELAY].pool
    first = asyncio.create_task(run(batch["key"], "b0"))
    await eventually(lambda: len(fake.requests) == 1)
    rest = [asyncio.create_task(run(batch["key"], f"b{n}")) for n in range(1, 5)]
    await eventually(lambda: len(pool.queue) == 4)
    interactive = asyncio.create_task(run(chat_key, "chat"))
    await eventually(lambda: len(pool.queue) == 5)
    assert await asyncio.gather(first, *rest, interactive) == [200] * 6
    order = [orjson.loads(r.body)["messages"][0]["content"] for r in fake.requests]
    assert order == ["b0", "chat", "b1", "b2", "b3", "b4"]


@pytest.mark.parametrize(
    "body",
    [{"priority": "urgent"}, {"priority": 2}, {"priority": ["high"]}, {"priority": {}}],
)
async def test_a_bad_priority_is_refused_with_an_error(
    aiohttp_client: AiohttpClient, db_path: str, body: dict[str, Any]
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    client = await aiohttp_client(create_app(Settings(token_db_path=db_path)))
    as_admin = {"Authorization": f"Bearer {admin_key}"}
    for method, url in (
        ("POST", "/admin/users"),
        ("PATCH", "/admin/users/root"),
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/1"),
    ):
        named = {"user": "x", "name": "y"} if url.endswith("keys") else {"user": "x"}
        sent = {**body, **named} if method == "POST" else body
        resp = await client.request(method, url, json=sent, headers=as_admin)
        assert resp.status == 400, (method, url, await resp.text())
        assert "priority must be one of high, normal, low" in (await resp.json())["error"]


async def test_the_store_keeps_classes_and_a_key_takes_its_users(database: str) -> None:
    store = await Store.open(database)
    try:
        await store.create_user("team", priority="high")
        record, _ = await store.create_key("team", "k")
        assert (record.priority, record.queue_class) == (None, PRIORITIES["high"])
        record = await store.update_key(record.id, {"priority": "low"})
        assert (record.priority, record.queue_class) == (LOW, LOW)
        await store.update_user("team", {"priority": None})
        (listed,) = [k for k in await store.list_keys() if k.id == record.id]
        assert listed.queue_class == LOW  # its own wins
        record = await store.update_key(record.id, {"priority": None})
        assert (record.priority, record.queue_class) == (None, NORMAL)
        assert (await store.get_user("team")).priority is None
    finally:
        await store.close()


async def test_a_database_of_the_release_before_upgrades_keeping_its_keys(database: str) -> None:
    """A database at revision 0024 with a user and a key opens with both as they were,
    queueing as normal, and takes classes."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(24))
            await conn.execute(insert(schema.users).values(id=7, name="alice", created_at=1.0))
            await conn.run_sync(old_key)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        old = await store.get_key(1)
        assert (old.user, old.name, old.key_hash, old.priority) == ("alice", "old", "1" * 64, None)
        assert old.queue_class == NORMAL
        assert (await store.get_user("alice")).priority is None
        assert (await store.update_key(1, {"priority": "high"})).queue_class == HIGH
    finally:
        await store.close()


# --- the CLIs ----------------------------------------------------------------------------


def test_the_flag_cli_sets_classes_on_keys_and_users(db_path: str) -> None:
    assert run("--add-user", "batch", "--priority", "low", "--db", db_path)[0] == 0
    assert run("-g", "batch", "embedder", "--db", db_path)[0] == 0
    assert run("-g", "ann", "chat", "--priority", "high", "--db", db_path)[0] == 0
    by_name = {k.name: k for k in keys_in(db_path)}
    assert (by_name["embedder"].priority, by_name["embedder"].queue_class) == (None, LOW)
    assert by_name["chat"].queue_class == HIGH
    code, out, _ = run("--set", "ann", "chat", "--priority", "none", "--db", db_path)
    assert code == 0 and "Priority" in out and "normal" in out
    assert run("--set-user", "batch", "--priority", "normal", "--db", db_path)[0] == 0
    assert {k.name: k.queue_class for k in keys_in(db_path)} == {"embedder": NORMAL, "chat": NORMAL}
    code, _, err = run("--set-user", "batch", "--priority", "urgent", "--db", db_path)
    assert code != 0 and "urgent" in err
    code, _, err = run("-l", "--priority", "high", "--db", db_path)
    assert code != 0 and "--priority goes with" in err
    _, out, _ = run("--users", "--format", "json", "--db", db_path)
    assert {u["user"]: u["priority"] for u in json.loads(out)} == {
        "ann": "normal",
        "batch": "normal",
    }


def test_the_menu_changes_only_a_keys_class(db_path: str) -> None:
    assert run("-g", "alice", "laptop", "--rpm", "7", "--db", db_path)[0] == 0
    (before,) = keys_in(db_path)
    with menu(db_path) as session:
        # Change, the one key, "Priority" (the fifth), then up from "none" to low
        session.type(*TO_CHANGE, ENTER, ENTER, *[DOWN] * 4, ENTER, UP, ENTER)
        session.type(*TO_EXIT)
    (after,) = keys_in(db_path)
    assert (after.priority, after.queue_class) == (LOW, LOW)
    assert replace(after, priority=None, queue_class=NORMAL) == before
