"""Now: the requests in flight on every gateway sharing the database, the upstreams'
queues and loaded models, and Stop, which ends a request wherever it is (reading, queued,
waiting for Ollama, streaming), charges it as an early leave and names who stopped it."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser
from pytest_aiohttp import AiohttpServer
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.records import UsageRecord
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import upstreams_from_file
from aigateway.upstreams.pool import LoadedModel, loaded_models
from aigateway.usage.journal import Journal, read_segment

from .browser import chromium, policy_refusals, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key
from .helpers import at_revision, eventually, old_usage_record

STALL = {"model": "stall", "messages": [{"role": "user", "content": "hi"}]}
PS_FIXTURE = {
    "name": "mistral:latest",
    "size_vram": 5137025024,
    "expires_at": "2024-06-04T14:38:31.83753-07:00",
}


def _settings(database: str, base: str, tmp_path: Path, name: str = "g") -> Settings:
    """A gateway's settings on `database` (a SQLite path or a PostgreSQL URL)."""
    if database.startswith("postgresql"):
        return Settings(
            ollama_base_url=base,
            database_url=database,
            token_db_path=str(tmp_path / f"{name}.db"),
            usage_journal_dir=str(tmp_path / f"journal-{name}"),
        )
    return Settings(ollama_base_url=base, token_db_path=database)


@pytest.fixture
async def ollama(aiohttp_server: AiohttpServer) -> tuple[FakeOllama, str]:
    """A fake Ollama on loopback, and its URL."""
    fake = FakeOllama()
    upstream = await aiohttp_server(fake.app())
    return fake, str(upstream.make_url("")).rstrip("/")


class Gateway:
    """A gateway on loopback and the keys to call it with."""

    def __init__(self, server: TestServer, admin: str, user: str) -> None:
        self.server, self.admin, self.user = server, admin, user

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def now(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.admin}"}
        async with session.get(self.url("/admin/now"), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
            return doc

    async def stop(self, session: aiohttp.ClientSession, now_id: str, key: str = "") -> Any:
        headers = {"Authorization": f"Bearer {key or self.admin}"}
        async with session.post(self.url(f"/admin/now/{now_id}/stop"), headers=headers) as resp:
            return resp.status, await resp.json()


async def _gateway(
    aiohttp_server: AiohttpServer, settings: Settings, database: str
) -> AsyncIterator[Gateway]:
    admin = await make_key(database, "root", "ops", "admin")
    user = await make_key(database, "alice", "laptop")
    yield Gateway(await aiohttp_server(create_app(settings)), admin, user)


async def _record(database: str) -> UsageRecord:
    """The usage record of the one request made, once the writer put it in the database."""
    store = await Store.open(database)
    try:
        found: list[UsageRecord] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [r for r in await store.usage_rows() if r.method == "POST"]
            if found:
                break
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    assert len(found) == 1, found
    return found[0]


async def _listed(gateway: Gateway, session: aiohttp.ClientSession, state: str) -> dict[str, Any]:
    """The one request Now lists, once it is in `state`."""
    deadline = time.monotonic() + 10
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = await gateway.now(session)
        states = [r["state"] for r in doc["requests"]]
        if states == [state]:
            return dict(doc["requests"][0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"never one request {state}: {doc}")


# --- one gateway, both databases ---------------------------------------------------------


async def test_a_stream_is_listed_and_stop_cuts_it_where_ollama_sees_it(
    aiohttp_server: AiohttpServer, database: str, tmp_path: Path, ollama: tuple[FakeOllama, str]
) -> None:
    fake, base = ollama
    async for gateway in _gateway(aiohttp_server, _settings(database, base, tmp_path), database):
        async with aiohttp.ClientSession() as session:
            user = {"Authorization": f"Bearer {gateway.user}"}
            async with session.post(gateway.url("/api/chat"), json=STALL, headers=user) as resp:
                assert resp.status == 200
                first = await resp.content.readline()
                assert b'"done":false' in first
                row = await _listed(gateway, session, "answering")
                doc = await gateway.now(session)
                this = doc["gateway"]
                assert row["id"] == f"{this}.{resp.headers['X-Request-Id']}"
                assert (row["user"], row["key"], row["model"], row["route"]) == (
                    "alice", "laptop", "stall:latest", "/api/chat",
                )  # fmt: skip
                assert row["upstream"] == "ollama" and row["tokens"] == 1
                assert row["elapsed_s"] >= 0 and row["stopped_by"] is None
                assert doc["gateways"][0]["this"] is True
                (view,) = doc["upstreams"]
                assert view["loaded_models"] == [PS_FIXTURE] and view["queued"] == 0
                # a user key may neither look nor stop
                async with session.get(gateway.url("/admin/now"), headers=user) as refused:
                    assert refused.status == 403
                assert (await gateway.stop(session, row["id"], gateway.user))[0] == 403
                status, answer = await gateway.stop(session, row["id"])
                assert (status, answer) == (202, {"stopping": row["id"], "gateway": this})
                rest = await resp.content.read()
            lines = [orjson.loads(line) for line in rest.splitlines() if line.strip()]
            assert lines[-1]["error"] == "aigateway: an admin stopped this request"
            await eventually(lambda: [p for p, _ in fake.abandoned] == ["/api/chat"])
            # gone from Now; a second Stop finds nothing
            assert (await gateway.now(session))["requests"] == []
            status, answer = await gateway.stop(session, row["id"])
            assert status == 404 and "it may have ended" in answer["error"]
            record = await _record(database)
            assert record.stopped_by == "root/ops"
            # charged as a client that left: what the stream carried, counted, estimated
            assert (record.status, record.completion_tokens, record.estimated) == (200, 1, True)
            assert record.client_gone is False
            # the export carries who stopped it
            admin = {"Authorization": f"Bearer {gateway.admin}"}
            export = gateway.url("/admin/usage?format=csv&since=0")
            async with session.get(export, headers=admin) as resp:
                (row,) = csv.DictReader(io.StringIO(await resp.text()))
            assert row["stopped_by"] == "root/ops"


async def test_stop_refuses_unknown_ids_and_a_browser_without_the_pages_header(
    aiohttp_server: AiohttpServer, tmp_path: Path, ollama: tuple[FakeOllama, str]
) -> None:
    _, base = ollama
    database = str(tmp_path / "tokens.db")
    async for gateway in _gateway(aiohttp_server, _settings(database, base, tmp_path), database):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            this = (await gateway.now(session))["gateway"]
            for now_id in (
                f"{this}.abcdef-1",  # this gateway's form, no such request
                "0badc0de.abcdef-1",  # another gateway (there is none on SQLite)
                "x' OR 1=1 --",
                "a" * 5000,
            ):
                status, answer = await gateway.stop(session, now_id)
                assert status == 404 and "error" in answer, (now_id, answer)
            same = {"X-Requested-With": "aigateway"}
            async with session.post(
                gateway.url("/ui/session"), json={"key": gateway.admin}, headers=same
            ) as resp:
                assert resp.status == 200
            stop = gateway.url(f"/admin/now/{this}.abcdef-1/stop")
            async with session.post(stop) as resp:  # by cookie, no header: CSRF refused
                assert resp.status == 403
            evil = {**same, "Origin": "https://evil.example"}
            async with session.post(stop, headers=evil) as resp:
                assert resp.status == 403
            async with session.post(stop, headers=same) as resp:
                assert resp.status == 404  # the page's own call gets as far as the id


# --- the queue, and a request waiting for Ollama's first byte -----------------------------


@pytest.fixture
async def one_slot(aiohttp_server: AiohttpServer, tmp_path: Path) -> AsyncIterator[Any]:
    """A gateway in front of one Ollama that takes one request at a time."""
    fake = FakeOllama()
    server = await aiohttp_server(fake.app())
    path = tmp_path / "upstreams.toml"
    url = str(server.make_url("")).rstrip("/")
    path.write_text(f'[[upstream]]\nname = "gpu"\nurl = "{url}"\nmax_concurrent = 1\n')
    database = str(tmp_path / "tokens.db")
    settings = Settings(
        token_db_path=database,
        upstreams=upstreams_from_file(str(path), {}),
        upstream_queue_timeout=30.0,
    )
    async for gateway in _gateway(aiohttp_server, settings, database):
        yield fake, gateway, database


async def test_a_queued_request_leaves_the_queue_with_a_clear_error(one_slot: Any) -> None:
    fake, gateway, database = one_slot
    user = {"Authorization": f"Bearer {gateway.user}"}
    async with aiohttp.ClientSession() as session:
        holding = await session.post(gateway.url("/api/chat"), json=STALL, headers=user)
        assert holding.status == 200
        queued = asyncio.create_task(
            session.post(gateway.url("/api/chat"), json={**STALL, "model": "q"}, headers=user)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            doc = await gateway.now(session)
            states = sorted(r["state"] for r in doc["requests"])
            if states == ["answering", "queued"]:
                break
            await asyncio.sleep(0.05)
        assert states == ["answering", "queued"], doc
        assert doc["upstreams"][0]["queued"] == 1 and doc["upstreams"][0]["name"] == "gpu"
        (waiting,) = [r for r in doc["requests"] if r["state"] == "queued"]
        assert waiting["upstream"] is None and waiting["model"] == "q:latest"
        assert (await gateway.stop(session, waiting["id"]))[0] == 202
        answer = await queued
        assert answer.status == 503 and answer.headers["x-should-retry"] == "false"
        assert (await answer.json())["error"] == "an admin of the gateway stopped this request"
        pool = gateway.server.app[RELAY].pool
        assert len(pool.queue) == 0 and pool.upstreams[0].in_flight == 1
        assert [r.model for r in fake.requests if r.method == "POST"] == ["stall"]  # never sent
        holding.close()
    store = await Store.open(database)
    try:
        deadline = time.monotonic() + 10
        records: list[UsageRecord] = []
        while time.monotonic() < deadline and len(records) < 2:
            records = await store.usage_rows()
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    (stopped,) = [r for r in records if r.model == "q:latest"]
    assert (stopped.status, stopped.stopped_by, stopped.cost) == (503, "root/ops", 0)
    assert stopped.prompt_tokens is None and stopped.completion_tokens is None


async def test_a_request_waiting_for_ollama_is_cut_and_charged_as_an_early_leave(
    one_slot: Any,
) -> None:
    fake, gateway, database = one_slot
    user = {"Authorization": f"Bearer {gateway.user}"}
    silent = {**STALL, "model": "silent"}
    async with aiohttp.ClientSession() as session:
        asking = asyncio.create_task(
            session.post(gateway.url("/api/chat"), json=silent, headers=user)
        )
        row = await _listed(gateway, session, "waiting")
        assert row["upstream"] == "gpu" and row["tokens"] is None
        assert (await gateway.stop(session, row["id"]))[0] == 202
        answer = await asking
        assert answer.status == 503
        assert "an admin of the gateway stopped" in (await answer.json())["error"]
    await eventually(lambda: [p for p, _ in fake.abandoned] == ["/api/chat"])
    record = await _record(database)
    # as a client that left after its request reached the GPU: 499, its prompt estimated
    assert (record.status, record.estimated, record.stopped_by) == (499, True, "root/ops")
    assert record.prompt_tokens and record.completion_tokens == 0


# --- two gateways on one PostgreSQL ------------------------------------------------------


async def test_two_gateways_see_each_others_requests_and_stop_them(
    aiohttp_server: AiohttpServer, pg_url: str, tmp_path: Path, ollama: tuple[FakeOllama, str]
) -> None:
    fake, base = ollama
    admin = await make_key(pg_url, "root", "ops", "admin")
    user = await make_key(pg_url, "alice", "laptop")
    servers = [
        await aiohttp_server(create_app(_settings(pg_url, base, tmp_path, name)))
        for name in ("a", "b")
    ]
    a, b = (Gateway(server, admin, user) for server in servers)
    async with aiohttp.ClientSession() as session:
        # nobody watched yet: nothing is published
        store = await Store.open(pg_url)
        try:
            assert await store.published_now(0) == []
        finally:
            await store.close()
        headers = {"Authorization": f"Bearer {user}"}
        async with session.post(b.url("/api/chat"), json=STALL, headers=headers) as resp:
            await resp.content.readline()
            b_id = (await b.now(session))["gateway"]
            deadline = time.monotonic() + 15
            doc: dict[str, Any] = {}
            while time.monotonic() < deadline:  # a's view: b publishes once told to
                doc = await a.now(session)
                if doc["requests"]:
                    break
                await asyncio.sleep(0.2)
            (row,) = doc["requests"]
            assert row["gateway"] == b_id and row["id"].startswith(b_id + ".")
            assert (row["user"], row["model"], row["state"]) == (
                "alice",
                "stall:latest",
                "answering",
            )
            assert sorted(g["this"] for g in doc["gateways"]) == [False, True]
            # an id b does not hold: 404 from a, by b's snapshot
            assert (await a.stop(session, f"{b_id}.abcdef-99"))[0] == 404
            assert await a.stop(session, row["id"]) == (
                202, {"stopping": row["id"], "gateway": b_id}
            )  # fmt: skip
            rest = await resp.content.read()
        assert b"an admin stopped this request" in rest
        await eventually(lambda: [p for p, _ in fake.abandoned] == ["/api/chat"], timeout=5)
    record = await _record(pg_url)
    assert (record.stopped_by, record.estimated) == ("root/ops", True)


# --- pieces ------------------------------------------------------------------------------


def test_loaded_models_are_read_as_hostile_input() -> None:
    body = orjson.dumps(
        {
            "models": [
                PS_FIXTURE,
                {"name": "b", "size_vram": -1, "expires_at": "soon<script>"},
                {"name": "c", "size_vram": True, "expires_at": 5},
                {"model": "d", "size_vram": 2**63},
                {"name": "", "size_vram": 1},
                "e",
            ]
        }
    )
    assert loaded_models(body) == [
        LoadedModel("mistral:latest", 5137025024, "2024-06-04T14:38:31.83753-07:00"),
        LoadedModel("b", None, None),
        LoadedModel("c", None, None),
        LoadedModel("d", None, None),
    ]


def test_the_journal_keeps_who_stopped_a_request_and_reads_the_release_before(
    tmp_path: Path,
) -> None:
    journal = Journal(str(tmp_path / "journal"))
    journal.open()
    record = UsageRecord(
        1.0, 1, "alice", "laptop", "POST", "/api/chat", "m", 200, 1, 2, 3.0, 1.0, 4, 5,
        False, True, 0, None, "m", "root/ops",
    )  # fmt: skip
    journal.append(record)
    # The release before: no stopped_by (nor what came after it), and a marked local one.
    before = [*record[: UsageRecord._fields.index("stopped_by")]]
    assert journal.current is not None
    with open(journal.current.path, "ab") as file:
        file.write(orjson.dumps(before) + b"\n")
        file.write(orjson.dumps([*before, "local"]) + b"\n")
    read = read_segment(journal.current.path)
    assert read[0] == record
    assert read[1] == record._replace(stopped_by=None)
    assert type(read[2]).__name__ == "LocalUsageRecord" and read[2].stopped_by is None


async def test_a_database_of_the_release_before_upgrades_keeping_its_records(database: str) -> None:
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(20))  # (the revision before Now's, 0021)
            await conn.run_sync(old_usage_record)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        (record,) = await store.usage_rows()
        assert (record.key_name, record.stopped_by) == ("old", None)
        if database.startswith("postgresql"):  # one row a gateway, replaced
            await store.publish_now("g1", 5.0, "{}")
            await store.publish_now("g1", 6.0, '{"requests": []}')
            assert await store.published_now(5.5) == [("g1", 6.0, '{"requests": []}')]
            await store.forget_now("g1")
            assert await store.published_now(0) == []
    finally:
        await store.close()


# --- the page ----------------------------------------------------------------------------


async def test_the_page_lists_a_request_and_its_stop_button_ends_it(
    aiohttp_server: AiohttpServer,
    browser: Browser,
    tmp_path: Path,
    ollama: tuple[FakeOllama, str],
) -> None:
    _, base = ollama
    database = str(tmp_path / "tokens.db")
    async for gateway in _gateway(aiohttp_server, _settings(database, base, tmp_path), database):
        url = str(gateway.server.make_url("")).rstrip("/")
        context, page = await signed_in(browser, url, gateway.admin)
        refused = policy_refusals(page)
        try:
            async with aiohttp.ClientSession() as session:
                user = {"Authorization": f"Bearer {gateway.user}"}
                async with session.post(gateway.url("/api/chat"), json=STALL, headers=user) as resp:
                    await resp.content.readline()
                    await page.goto(f"{url}/ui/#/now")
                    row = page.locator("#view-now tbody tr", has_text="alice")
                    await row.wait_for()
                    assert "answering" in await row.inner_text()
                    # refreshed on its own: the elapsed time moves
                    before = await row.locator("td[data-label=Elapsed]").inner_text()
                    await page.wait_for_function(
                        "(t) => document.querySelector('#view-now td[data-label=Elapsed]')"
                        "?.textContent !== t",
                        arg=before,
                        timeout=5000,
                    )
                    await shot(page, "now-stop-before")
                    await row.get_by_role("button", name="Stop alice's request").click()
                    await page.wait_for_selector("#now-status", state="attached")
                    await page.wait_for_function(
                        "() => document.querySelector('#now-status').textContent"
                        ".startsWith('Stopped alice')"
                    )
                    rest = await resp.content.read()
                assert b"an admin stopped this request" in rest
                await page.wait_for_selector("#view-now p.empty")  # gone from the list
                await shot(page, "now-stop-after")
                record = await _record(database)
                assert record.stopped_by == "root/ops"
            assert refused == []
        finally:
            await context.close()
