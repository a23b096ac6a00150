"""/health and /health/ollama: enough for a load balancer, nothing for an attacker; the
details for an admin key."""

from __future__ import annotations

from dataclasses import replace

from aiohttp.test_utils import TestClient

from aigateway import Settings, create_app


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
