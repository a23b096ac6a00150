"""The dashboard's own calls are not usage: the Overview reads each upstream's state and
loaded models from the admin API (the pool's last check; with one upstream, its probe
and /api/ps asked at most once an interval), never through the relay, so a refresh
makes no usage record and no request to the upstream. The Playground stays usage."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import cast

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .browser import chromium, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key

STATIC = Path(__file__).resolve().parent.parent / "aigateway" / "ui" / "static"
SAME = {"X-Requested-With": "aigateway"}
# What the Overview reads (checked against its module below), the times a viewer refreshes.
OVERVIEW_READS = (
    "/admin/stats?since={week_ago}&parts=last_24h,last_7d,per_user,per_model,refused",
    "/admin/series?range=24h&split=total&scope=gateway",  # (its charts' first view)
    "/admin/cache",  # (this gateway's response cache: its card when it is on)
    "/admin/upstreams",
)
REFRESHES = 8


def _dashboard_source() -> str:
    return "\n".join(path.read_text() for path in sorted(STATIC.glob("*.js")))


def _function_source(opening: str) -> str:
    source = _dashboard_source()
    start = source.index(opening)
    return source[start : source.index("\n}\n", start)]


def test_the_overview_reads_the_admin_api_only() -> None:
    """The list the test below loads is what the Overview reads, and none of it relayed."""
    body = _function_source("async function overview(view) {")
    reads = r'api\("GET", `\$\{PATHS\.admin\}([^`]*)`\)'
    read = ["/admin" + r.replace("${weekAgo}", "{week_ago}") for r in re.findall(reads, body)]
    # (its charts read the series of the range and split chosen, the gateway's)
    assert 'usageCharts("gateway"' in body
    (series,) = re.findall(reads, _function_source("async function load(panel) {"))
    assert series == "/series?range=${range}&split=${split}&scope=${panel.scope}"
    assert sorted([*read, OVERVIEW_READS[1]]) == sorted(OVERVIEW_READS)
    assert "fetch(" not in body
    # The one relayed call in the whole dashboard is the Playground's chat: a person's
    # use of a model, recorded as theirs.
    source = _dashboard_source()
    playground = _function_source("async function playground(view) {")
    assert source.count("PATHS.api}") == playground.count("PATHS.api}") == 1
    assert "/health/" not in source


async def _usage_records(server: TestServer, db_path: str) -> int:
    assert await server.app[RELAY].usage.flush()
    store = await Store.open(db_path)
    try:
        return len(await store.usage_rows())
    finally:
        await store.close()


async def test_refreshing_the_overview_makes_no_usage_and_no_upstream_call(
    aiohttp_server: AiohttpServer, settings: Settings, fake: FakeOllama, db_path: str
) -> None:
    """One upstream (never checked): its state and loaded models come from one probe and
    one /api/ps an interval, shared by every viewer; with a dashboard session, N loads
    of the Overview's data add no usage record and no request to the upstream."""
    server = await aiohttp_server(create_app(replace(settings, upstream_check_interval=60.0)))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(server.make_url("")).rstrip("/")

    def asked(path: str) -> int:
        return sum(r.path_qs == path for r in fake.requests)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "/ui/session", json={"key": admin_key}, headers=SAME) as resp:
            assert resp.status == 200

        async def load_overview() -> list[dict[str, object]]:
            docs = []
            for path in OVERVIEW_READS:
                async with session.get(url + path.format(week_ago=0), headers=SAME) as resp:
                    assert resp.status == 200, (path, await resp.text())
                    docs.append(await resp.json())
            upstreams = docs[-1]["upstreams"]
            assert isinstance(upstreams, list)
            return cast(list[dict[str, object]], upstreams)

        # A use of a model through the same session (as the Playground's) is usage.
        chat = {"model": "llama3.2", "messages": [], "stream": False}
        async with session.post(url + "/api/chat", json=chat, headers=SAME) as resp:
            assert resp.status == 200
        assert await _usage_records(server, db_path) == 1

        (first,) = await load_overview()  # the one look this interval
        assert first["name"] == "ollama" and first["status"] == "up", first
        assert first["loaded"] == ["mistral:latest"], first  # (the fake's /api/ps)
        assert (asked("/api/ps"), asked("/api/version")) == (1, 1)
        records = await _usage_records(server, db_path)
        for _ in range(REFRESHES):
            (again,) = await load_overview()
            assert again["loaded"] == ["mistral:latest"] and again["status"] == "up"
        assert (asked("/api/ps"), asked("/api/version")) == (1, 1)
        assert await _usage_records(server, db_path) == records == 1


async def test_one_upstreams_loaded_models_are_asked_again_after_an_interval(
    aiohttp_server: AiohttpServer, settings: Settings, fake: FakeOllama, db_path: str
) -> None:
    """Once an interval, not once: a model loaded since shows after the interval."""
    server = await aiohttp_server(create_app(replace(settings, upstream_check_interval=2.0)))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    headers = {"Authorization": f"Bearer {admin_key}"}
    fake.loaded = ["llama3.2:latest"]

    async def loaded_now() -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(str(server.make_url("/admin/upstreams")), headers=headers) as resp,
        ):
            (only,) = (await resp.json())["upstreams"]
            return cast(list[str], only["loaded"])

    assert [await loaded_now() for _ in range(5)] == [["llama3.2:latest"]] * 5
    fake.loaded = ["llama3.2:latest", "qwen2.5:0.5b"]
    assert await loaded_now() == ["llama3.2:latest"]  # the last answer, still young
    await asyncio.sleep(2.1)
    assert await loaded_now() == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert sum(r.path_qs == "/api/ps" for r in fake.requests) == 2


async def test_one_upstream_that_does_not_answer_is_shown_out_and_why(
    aiohttp_server: AiohttpServer, db_path: str, dead_port: int
) -> None:
    settings = Settings(ollama_base_url=f"http://127.0.0.1:{dead_port}", token_db_path=db_path)
    server = await aiohttp_server(create_app(settings))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            str(server.make_url("/admin/upstreams")),
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as resp,
    ):
        doc = await resp.json()
    assert resp.status == 200 and doc["checked"] is False, doc
    (only,) = doc["upstreams"]
    assert (only["name"], only["status"], only["loaded"]) == ("ollama", "out", []), only
    assert only["reason"].startswith("Ollama did not answer"), only


async def test_with_several_upstreams_the_overview_asks_none_of_them(
    aiohttp_server: AiohttpServer, db_path: str
) -> None:
    """Several upstreams: the Overview's data is the pool's last check, whatever the
    number of viewers; each upstream named, with its loaded models."""
    ones = [FakeOllama(models=["llama3.2:latest"], loaded=["llama3.2"]), FakeOllama(loaded=[])]
    servers = [await aiohttp_server(one.app()) for one in ones]
    settings = Settings(
        ollama_base_url=",".join(str(s.make_url("")).rstrip("/") for s in servers),
        token_db_path=db_path,
        upstream_check_interval=60.0,
    )
    server = await aiohttp_server(create_app(settings))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(server.make_url("")).rstrip("/")
    seen = [len(one.requests) for one in ones]  # the first check, at start
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "/ui/session", json={"key": admin_key}, headers=SAME) as resp:
            assert resp.status == 200
        for _ in range(REFRESHES):
            for path in OVERVIEW_READS:
                async with session.get(url + path.format(week_ago=0), headers=SAME) as resp:
                    assert resp.status == 200
                    doc = await resp.json()
        assert [(u["name"], u["status"], u["loaded"]) for u in doc["upstreams"]] == [
            ("ollama1", "up", ["llama3.2:latest"]),
            ("ollama2", "up", []),
        ]
    assert [len(one.requests) for one in ones] == seen
    assert await _usage_records(server, db_path) == 0


async def test_the_overview_names_the_one_upstream_and_its_loaded_models(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, fake: FakeOllama
) -> None:
    """In a browser: "ollama up" and the model /api/ps lists; reloading the page asks
    the upstream nothing more and records nothing."""
    fake.loaded = ["llama3.2:latest", "qwen2.5:0.5b"]
    server = await aiohttp_server(create_app(replace(settings, upstream_check_interval=60.0)))
    db_path = settings.token_db_path
    assert db_path is not None
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(server.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, admin_key)
    try:
        await page.wait_for_selector("#ollama .stat")
        upstream = page.locator("#ollama .stat", has_text="Upstream").locator(".value")
        assert await upstream.text_content() == "ollama up"
        loaded = page.locator("#ollama .stat", has_text="Models loaded").locator(".value")
        assert await loaded.text_content() == "llama3.2:latest, qwen2.5:0.5b"
        await shot(page, "overview-one-upstream")
        for _ in range(3):
            await page.reload()
            await page.wait_for_selector("#ollama .stat")
        assert sum(r.path_qs == "/api/ps" for r in fake.requests) == 1
        assert await _usage_records(server, db_path) == 0
    finally:
        await context.close()
