"""/health and /health/ollama: enough for a load balancer, nothing for an attacker; the
details for an admin key."""

from __future__ import annotations

from dataclasses import replace

from aiohttp.test_utils import TestClient

from aigateway import Settings, create_app
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import UpstreamConfig

from .conftest import make_key


async def test_anonymous_health_says_only_ok(anon: TestClient, admin_key: str, key: str) -> None:
    for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer junk"}):
        resp = await anon.get("/health", headers=headers)
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    detail = await (
        await anon.get("/health", headers={"Authorization": f"Bearer {admin_key}"})
    ).json()
    assert detail["keys_loaded"] == 2 and "version" in detail


async def test_anonymous_ollama_health_names_no_url(anon: TestClient, admin_key: str) -> None:
    resp = await anon.get("/health/ollama")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    detail = await (await anon.get("/health/ollama", headers={"x-api-key": admin_key})).json()
    assert detail["ollama_url"].startswith("http://127.0.0.1:") and detail["ollama_version"]


async def test_an_unreachable_ollama_is_503_without_details(
    aiohttp_client, aiohttp_server, settings: Settings, admin_key: str
) -> None:  # type: ignore[no-untyped-def]
    dead = replace(settings, ollama_base_url="http://127.0.0.1:9")
    client = await aiohttp_client(await aiohttp_server(create_app(dead)))
    resp = await client.get("/health/ollama")
    assert (resp.status, await resp.json()) == (503, {"status": "unreachable"})
    resp = await client.get("/health/ollama", headers={"Authorization": f"Bearer {admin_key}"})
    doc = await resp.json()
    assert resp.status == 503 and "127.0.0.1:9" in doc["error"] + doc["ollama_url"]


async def test_an_admin_key_made_a_moment_ago_gets_the_details_at_once(
    anon: TestClient, db_path: str
) -> None:
    fresh = await make_key(db_path, "root", "new-admin", "admin")  # after the gateway started
    for path in ("/health", "/health/ollama"):
        resp = await anon.get(path, headers={"Authorization": f"Bearer {fresh}"})
        doc = await resp.json()
        assert resp.status == 200 and len(doc) > 1, (path, doc)


async def test_one_cloud_upstream_is_probed_by_its_model_list(
    aiohttp_client, aiohttp_server, db_path: str, admin_key: str
) -> None:  # type: ignore[no-untyped-def]
    """A cloud API has no /api/version: the gateway in front of one cloud upstream
    alone asks its /models, with the upstream's own key."""
    cloud = FakeOllama()
    server = await aiohttp_server(cloud.app())
    url = str(server.make_url("/v1")).rstrip("/")
    only = UpstreamConfig(name="oa", url=url, kind="openai", key="sk-oa-secret")
    gateway = await aiohttp_server(create_app(Settings(upstreams=(only,), token_db_path=db_path)))
    client = await aiohttp_client(gateway)
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
