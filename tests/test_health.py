"""/health and /health/ollama: enough for a load balancer, nothing for an attacker; the
details for an admin key."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from aiohttp.test_utils import TestClient
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import UpstreamConfig

from .conftest import make_key


async def test_anonymous_health_says_only_ok(
    anon: TestClient[Request, None], admin_key: str, key: str
) -> None:
    for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer junk"}):
        resp = await anon.get("/health", headers=headers)
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    detail = await (
        await anon.get("/health", headers={"Authorization": f"Bearer {admin_key}"})
    ).json()
    assert detail["keys_loaded"] == 2 and "version" in detail
    assert detail["alerts"] is None  # off by default


async def test_anonymous_ollama_health_names_no_url(
    anon: TestClient[Request, None], admin_key: str
) -> None:
    resp = await anon.get("/health/ollama")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    detail = await (await anon.get("/health/ollama", headers={"x-api-key": admin_key})).json()
    assert detail["ollama_url"].startswith("http://127.0.0.1:") and detail["ollama_version"]


async def test_an_unreachable_ollama_is_503_without_details(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, settings: Settings, admin_key: str
) -> None:
    dead = replace(settings, ollama_base_url="http://127.0.0.1:9")
    client: TestClient[Request, None] = await aiohttp_client(await aiohttp_server(create_app(dead)))
    resp = await client.get("/health/ollama")
    assert (resp.status, await resp.json()) == (503, {"status": "unreachable"})
    resp = await client.get("/health/ollama", headers={"Authorization": f"Bearer {admin_key}"})
    doc = await resp.json()
    assert resp.status == 503 and "127.0.0.1:9" in doc["error"] + doc["ollama_url"]


async def test_an_admin_key_made_a_moment_ago_gets_the_details_at_once(
    anon: TestClient[Request, None], db_path: str
) -> None:
    fresh = await make_key(db_path, "root", "new-admin", "admin")  # after the gateway started
    for path in ("/health", "/health/ollama"):
        resp = await anon.get(path, headers={"Authorization": f"Bearer {fresh}"})
        doc = await resp.json()
        assert resp.status == 200 and len(doc) > 1, (path, doc)


async def test_one_cloud_upstream_is_probed_by_its_model_list(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, db_path: str, admin_key: str
) -> None:
    """A cloud API has no /api/version: the gateway in front of one cloud upstream
    alone asks its /models, with the upstream's own key."""
    cloud = FakeOllama()
    server = await aiohttp_server(cloud.app())
    url = str(server.make_url("/v1")).rstrip("/")
    only = UpstreamConfig(name="oa", url=url, kind="openai", key="sk-oa-secret")
    gateway = await aiohttp_server(create_app(Settings(upstreams=(only,), token_db_path=db_path)))
    client: TestClient[Request, None] = await aiohttp_client(gateway)
    assert (await client.get("/health/ollama")).status == 200
    resp = await client.get("/health/ollama", headers={"x-api-key": admin_key})
    doc = await resp.json()
    assert resp.status == 200 and doc["status"] == "ok" and doc["upstream"] == "oa", doc
    assert "sk-oa-secret" not in await resp.text()
    probe = cloud.requests[-1]
    assert probe.path_qs == "/v1/models" and probe.headers["Authorization"] == "Bearer sk-oa-secret"
    await server.close()  # the cloud API gone
    resp = await client.get("/health/ollama", headers={"x-api-key": admin_key})
    doc = await resp.json()
    assert resp.status == 503 and doc["status"] == "unreachable", doc
    assert "upstream oa did not answer" in doc["error"]


async def _crowd(
    client: TestClient[Request, None], n: int, headers: dict[str, str] | None = None
) -> list[int]:
    async def one() -> int:
        resp = await client.get("/health/ollama", headers=headers or {})
        await resp.read()
        return resp.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_anonymous_callers_make_one_cloud_probe_an_interval(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, db_path: str, admin_key: str
) -> None:
    """A crowd of anonymous /health/ollama calls in front of one paid cloud API costs
    it one /models request per UPSTREAM_CHECK_INTERVAL, with the server's key; an admin
    troubleshooting gets a probe of now."""
    cloud = FakeOllama()
    server = await aiohttp_server(cloud.app())
    only = UpstreamConfig(name="oa", url=str(server.make_url("/v1")), kind="openai", key="sk-x")
    settings = Settings(upstreams=(only,), token_db_path=db_path, upstream_check_interval=1.0)
    client: TestClient[Request, None] = await aiohttp_client(
        await aiohttp_server(create_app(settings))
    )

    def probes() -> int:
        return sum(r.path_qs == "/v1/models" for r in cloud.requests)

    assert await _crowd(client, 50) == [200] * 50  # at once: they share one probe
    for _ in range(20):  # one after another within the interval: the same answer
        assert (await client.get("/health/ollama")).status == 200
    assert probes() == 1
    await asyncio.sleep(1.1)
    assert await _crowd(client, 10) == [200] * 10
    assert probes() == 2
    await server.close()  # the cloud API gone: anonymous callers learn it within an interval
    assert (await client.get("/health/ollama")).status == 200  # the last answer, still young
    resp = await client.get("/health/ollama", headers={"x-api-key": admin_key})
    assert resp.status == 503 and (await resp.json())["status"] == "unreachable"
    assert (await client.get("/health/ollama")).status == 503  # the admin's probe is shared


async def test_one_ollama_is_probed_once_an_interval(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, settings: Settings
) -> None:
    ollama = FakeOllama()
    server = await aiohttp_server(ollama.app())
    one = replace(
        settings,
        ollama_base_url=str(server.make_url("")).rstrip("/"),
        upstream_check_interval=30.0,
    )
    client: TestClient[Request, None] = await aiohttp_client(await aiohttp_server(create_app(one)))
    assert await _crowd(client, 40) == [200] * 40
    assert await _crowd(client, 40, {"Authorization": "Bearer not-a-key"}) == [200] * 40
    assert [r.path_qs for r in ollama.requests] == ["/api/version"]
