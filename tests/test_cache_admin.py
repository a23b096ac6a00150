"""The response cache in the admin API (admin/cacheroutes.py): GET /admin/cache says
whether it is on, its settings and this gateway's counts, as the OpenAPI document
describes them; DELETE empties it (logged, who and how many), after which the same
request goes to the upstream again; with the cache off GET says so and DELETE is 409;
a key that is not an admin's gets 403 on both. Usage records carry their `cached` mark in
the listing and both downloads, and `cached=true|false` picks them for the records and
their statistics alike (read from the records: no sums hold the mark)."""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # (openapi-spec-validator's)
from pytest_aiohttp import AiohttpClient, AiohttpServer
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from aigateway import Settings, create_app
from aigateway.admin.openapi import openapi_document
from aigateway.testing.fake_ollama import FakeOllama

from .test_cache import EMBED, HEADER, GatewayClient, _at_upstream, _listed, _twice, settings
from .test_policy import _usage

__all__ = ["settings"]  # (test_cache's gateway settings: the cache on, 1 MiB)


def _check_shape(document: Any, schema: str) -> None:
    """`document` is what the OpenAPI document says the route answers."""
    spec = DRAFT202012.create_resource(openapi_document(Settings()))
    registry: Registry[Any] = Registry().with_resource("urn:openapi", spec)
    shape = {"$ref": f"urn:openapi#/components/schemas/{schema}"}
    Draft202012Validator(shape, registry=registry).validate(document)


@pytest.fixture
async def admin(
    aiohttp_client: AiohttpClient, gateway: TestServer, admin_key: str
) -> GatewayClient:
    await _listed(gateway)
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {admin_key}"})


async def test_the_cache_shows_this_gateways_counts_and_is_emptied(
    admin: GatewayClient,
    client: GatewayClient,
    fake: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resp = await admin.get("/admin/cache")
    assert resp.status == 200
    before = await resp.json()
    assert before["enabled"] is True
    assert before["settings"] == {
        "size": 1024**2,
        "ttl_seconds": 3600.0,
        "routes": ["/api/embed", "/api/embeddings", "/v1/embeddings", "/api/chat",
                   "/api/generate", "/v1/chat/completions"],
        "models": ["*"],
        "scope": "user",
        "hit_price": "free",
    }  # fmt: skip
    assert before["stats"]["hit_rate"] is None  # (no lookup yet)
    assert (before["stats"]["hits"], before["stats"]["entries"]) == (0, 0)
    # Per gateway, and named: the id Now shows for this gateway.
    now = await (await admin.get("/admin/now")).json()
    assert before["gateway"] == now["gateway"]
    assert "this gateway" in before["per_gateway"]
    _check_shape(before, "Cache")

    await _twice(client, "/api/embed", EMBED)  # a miss, then a hit
    held = await (await admin.get("/admin/cache")).json()
    stats = held["stats"]
    assert (stats["hits"], stats["misses"], stats["stored"], stats["entries"]) == (1, 1, 1, 1)
    assert stats["hit_rate"] == 0.5
    assert 0 < stats["bytes"] <= stats["capacity_bytes"] == 1024**2
    _check_shape(held, "Cache")

    with caplog.at_level(logging.INFO, logger="aigateway"):
        resp = await admin.delete("/admin/cache")
    assert resp.status == 200
    cleared = await resp.json()
    assert cleared == {"dropped": 1, "gateway": now["gateway"]}
    _check_shape(cleared, "CacheCleared")
    assert any(
        "response cache cleared by root/ops" in r.getMessage() and "1 answers" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    after = (await (await admin.get("/admin/cache")).json())["stats"]
    assert (after["entries"], after["bytes"]) == (0, 0)
    assert (after["hits"], after["misses"]) == (1, 1)  # (counts since start stay)
    # Emptied: the same body goes to the upstream again.
    again = await client.post("/api/embed", data=EMBED)
    assert again.headers[HEADER] == "miss"
    assert _at_upstream(fake, "/api/embed") == 2
    assert (await (await admin.delete("/admin/cache")).json())["dropped"] == 1


async def test_only_an_admin_sees_or_empties_the_cache(client: GatewayClient) -> None:
    for method in ("GET", "DELETE"):
        resp = await client.request(method, "/admin/cache")
        assert resp.status == 403, method
        assert "admin" in (await resp.json())["error"]


async def test_with_the_cache_off_get_says_so_and_delete_is_a_conflict(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    upstream: TestServer,
    db_path: str,
    admin_key: str,
) -> None:
    off = Settings(ollama_base_url=str(upstream.make_url("")).rstrip("/"), token_db_path=db_path)
    gateway = await aiohttp_server(create_app(off))
    admin: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {admin_key}"}
    )
    resp = await admin.get("/admin/cache")
    assert resp.status == 200
    shown = await resp.json()
    assert shown["enabled"] is False and shown["stats"] is None
    assert shown["settings"]["size"] == 0
    _check_shape(shown, "Cache")
    resp = await admin.delete("/admin/cache")
    assert resp.status == 409
    assert "CACHE_SIZE=0" in (await resp.json())["error"]


async def test_usage_records_carry_their_cached_mark_and_are_filtered_by_it(
    admin: GatewayClient, client: GatewayClient, db_path: str
) -> None:
    await _twice(client, "/api/embed", EMBED)  # a miss, then a hit
    await _usage(db_path, 2)

    async def listed(query: str) -> list[bool]:
        resp = await admin.get(f"/admin/usage?{query}")
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        assert page["refused"] is None or "cached" not in query  # (refusals hold no mark)
        return [record["cached"] for record in page["records"]]

    assert await listed("") == [True, False]  # newest first
    assert await listed("cached=true") == [True]
    assert await listed("cached=false") == [False]
    assert await listed("cached=true&model=llama3.2&route=/api/embed") == [True]
    assert await listed("cached=true&status=500") == []

    # The statistics of the same filter: over whole days (which the daily sums would
    # answer, both records in one) and over the last hour (the hourly sums' path).
    later = int(time.time()) + 2 * 86400
    for period in (f"since=0&until={later}", f"since={int(time.time()) - 3600}"):
        for mark, requests in (("&cached=true", 1), ("&cached=false", 1), ("", 2)):
            resp = await admin.get(f"/admin/stats?{period}{mark}&parts=totals,per_model,refused")
            assert resp.status == 200, await resp.text()
            stats = await resp.json()
            assert stats["totals"]["requests"] == requests, (period, mark)
            assert [row["requests"] for row in stats["per_model"]] == [requests], (period, mark)
            assert (stats["refused"] is None) == bool(mark)
            if mark:  # (read from the daily sums, as a status filter is: no percentiles)
                assert stats["totals"]["p50_ms"] is None

    # Both downloads carry the mark, the CSV in a column of its own.
    text = await (await admin.get("/admin/usage?format=csv")).text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["cached"] for row in rows] == ["True", "False"]
    text = await (await admin.get("/admin/usage?format=csv&cached=true")).text()
    assert [row["cached"] for row in csv.DictReader(io.StringIO(text))] == ["True"]
    records = await (await admin.get("/admin/usage?format=json&cached=false")).json()
    assert [record["cached"] for record in records] == [False]

    for bad in ("yes", "1", "True"):
        resp = await admin.get(f"/admin/usage?cached={bad}")
        assert resp.status == 400
        assert "cached must be true or false" in (await resp.json())["error"]
        assert (await admin.get(f"/admin/stats?cached={bad}")).status == 400
