"""Who may do what and how much: roles, model allow-lists, limits, quotas, usage records."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.protocol.names import canonical
from aigateway.protocol.routes import RELAY_ROUTES
from aigateway.records import DAY, KeyLimits, UsageRecord
from aigateway.testing.fake_ollama import FakeOllama, fixture

from .conftest import make_key
from .helpers import clock_room, eventually, minute_room, seconds_left

MANAGE = [
    pytest.param(method, route.path, id=f"{method} {route.path}")
    for route in RELAY_ROUTES
    if route.kind == "manage"
    for method in route.methods
]


async def _client(
    aiohttp_client: AiohttpClient, gateway: TestServer, secret: str
) -> TestClient[Request, None]:
    """A client for a key made while the gateway runs, once the gateway has loaded it."""
    client: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {secret}"}
    )
    await eventually(lambda: secret_known(gateway, secret))
    return client


def secret_known(gateway: TestServer, secret: str) -> bool:
    from aigateway.access.keytable import AuthError
    from aigateway.http.appkeys import KEY_TABLE

    try:
        gateway.app[KEY_TABLE].authenticate(secret)
    except AuthError:
        return False
    return True


async def _usage(db_path: str, count: int) -> list[UsageRecord]:
    """The usage records once `count` of them have been written."""
    rows: list[UsageRecord] = []
    deadline = time.monotonic() + 5
    while len(rows) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} usage records written"
        await asyncio.sleep(0.1)
        store = await Store.open(db_path)
        rows = await store.usage_rows()
        await store.close()
    return rows


# --- roles ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), MANAGE)
async def test_user_keys_may_not_manage_models(
    client: TestClient[Request, None], fake: FakeOllama, method: str, path: str
) -> None:
    resp = await client.request(
        method, "/api" + path.replace("{digest}", "sha256:00"), data=b'{"model":"llama3.2"}'
    )
    assert resp.status == 403
    if method != "HEAD":
        assert "admin key" in (await resp.json())["error"]
    assert fake.requests == []


async def test_bootstrap_admin_key_from_settings(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "bootstrap-" + "x" * 40
    caplog.set_level(logging.DEBUG)
    app = create_app(Settings(**{**_fields(settings), "gateway_admin_key": secret}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {secret}"})
    resp = await client.post("/api/pull", data=b'{"model":"llama3.2","stream":false}')
    assert resp.status == 200
    assert secret not in caplog.text
    assert "key=GATEWAY_ADMIN_KEY" in caplog.text


# --- model allow-lists -----------------------------------------------------------------


@pytest.fixture
async def limited(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str
) -> TestClient[Request, None]:
    secret = await make_key(db_path, "lee", "llama-only", "admin", models=["llama3*", "all-minilm"])
    return await _client(aiohttp_client, gateway, secret)


@pytest.mark.parametrize(
    ("method", "path", "allowed", "denied"),
    [
        (
            "POST",
            "/generate",
            b'{"model":"llama3.2","prompt":"hi"}',
            b'{"model":"qwen3","prompt":"hi"}',
        ),
        (
            "POST",
            "/chat",
            b'{"model":"llama3","messages":[]}',
            b'{"model":"mistral","messages":[]}',
        ),
        ("POST", "/embed", b'{"model":"all-minilm","input":"a"}', b'{"model":"nomic","input":"a"}'),
        (
            "POST",
            "/embeddings",
            b'{"model":"all-minilm:latest","prompt":"a"}',
            b'{"model":"x","prompt":"a"}',
        ),
        ("POST", "/show", b'{"model":"llama3.2"}', b'{"name":"qwen3"}'),
        ("POST", "/pull", b'{"model":"llama3.2","stream":false}', b'{"model":"qwen3"}'),
        ("POST", "/push", b'{"model":"llama3.2","stream":false}', b'{"model":"qwen3"}'),
        ("POST", "/create", b'{"model":"llama3-mine","from":"llama3.2"}', b'{"model":"mine"}'),
        (
            "POST",
            "/create",
            b'{"model":"llama3-mine","from":"llama3.2"}',
            b'{"model":"llama3-mine","from":"qwen3"}',
        ),
        (
            "POST",
            "/copy",
            b'{"source":"llama3.2","destination":"llama3-copy"}',
            b'{"source":"llama3.2","destination":"qwen-copy"}',
        ),
        ("DELETE", "/delete", b'{"model":"llama3-copy"}', b'{"model":"qwen3"}'),
    ],
)
async def test_allow_list_on_every_route_that_names_a_model(
    limited: TestClient[Request, None],
    fake: FakeOllama,
    method: str,
    path: str,
    allowed: bytes,
    denied: bytes,
) -> None:
    resp = await limited.request(method, "/api" + path, data=allowed)
    assert resp.status == 200, await resp.text()
    assert fake.requests[-1].body == allowed  # the bytes sent on are unchanged
    relayed = len(fake.requests)
    resp = await limited.request(method, "/api" + path, data=denied)
    assert resp.status == 403
    assert "may not use the model" in (await resp.json())["error"]
    assert len(fake.requests) == relayed


async def test_allow_list_reads_the_model_from_the_body_only(
    limited: TestClient[Request, None], fake: FakeOllama
) -> None:
    resp = await limited.post(
        "/api/chat?model=llama3.2",
        headers={"X-Model": "llama3.2"},
        data=b'{"model":"qwen3","messages":[]}',
    )
    assert resp.status == 403
    for body in (b"not json", b"[1,2]", b""):
        assert (await limited.post("/api/chat", data=body)).status == 400
    # no model: refused as Ollama refuses it, before anything is relayed
    resp = await limited.post("/api/chat", data=b'{"messages":[]}')
    assert resp.status == 400 and (await resp.json())["error"] == "model is required"
    assert (await limited.post("/api/blobs/sha256:00", data=b"x")).status == 403
    assert fake.requests == []


async def test_an_unreadable_body_is_refused_whatever_cloud_models_may_do(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
    fake: FakeOllama,
) -> None:
    """The gateway must know which model a body names before it lets it by: it could be
    a cloud model, or a priced one. Until issue 24, with ALLOW_CLOUD_MODELS a key without
    an allow-list could send a body the gateway cannot read, relayed nameless and free."""
    for allow_cloud in (False, True):
        fake.requests.clear()
        app = create_app(dataclasses.replace(settings, allow_cloud_models=allow_cloud))
        client: TestClient[Request, None] = await aiohttp_client(
            await aiohttp_server(app), headers={"Authorization": f"Bearer {key}"}
        )
        resp = await client.post("/api/chat", data=b"not json")
        assert resp.status == 400 and not fake.requests
        document = await resp.json()
        assert "must read the model" in document["error"]
        assert document["reason"] == "undecidable_body"


async def test_model_lists_show_only_allowed_models(
    limited: TestClient[Request, None], client: TestClient[Request, None]
) -> None:
    tags = await (await limited.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest"]
    assert (await (await limited.get("/api/ps")).json()) == {"models": []}
    assert (await limited.get("/api/version")).status == 200
    assert await (await client.get("/api/tags")).read() == fixture("tags.json")


async def test_model_lists_keep_ollamas_bytes(
    limited: TestClient[Request, None], client: TestClient[Request, None], fake: FakeOllama
) -> None:
    from .test_model_lists import GO_TAGS, GO_TAGS_LLAMA, PRETTY_PS, PRETTY_PS_LLAMA

    fake.list_bodies = {"/api/tags": GO_TAGS, "/api/ps": PRETTY_PS}
    assert await (await client.get("/api/tags")).read() == GO_TAGS
    assert await (await client.get("/api/ps")).read() == PRETTY_PS
    assert await (await limited.get("/api/tags")).read() == GO_TAGS_LLAMA
    assert await (await limited.get("/api/ps")).read() == PRETTY_PS_LLAMA
    assert await (await limited.get("/v1/models")).read() == (
        b'{"object":"list","data":[{"id":"llama3.2:latest","object":"model",'
        b'"created":1746405464,"owned_by":"library"}]}'
    )
    fake.list_bodies = {"/api/tags": b"<html>not a list</html>"}
    assert await (await limited.get("/api/tags")).read() == b"<html>not a list</html>"


# --- limits -----------------------------------------------------------------------------


async def test_a_rate_limit_is_exact_under_concurrency(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    secret = await make_key(db_path, "rita", "burst", limits=KeyLimits(rpm=50))
    client = await _client(aiohttp_client, gateway, secret)

    async def one() -> aiohttp.ClientResponse:
        resp = await client.post("/api/chat", data=b'{"model":"llama3.2","stream":false}')
        await resp.read()
        return resp

    end = await minute_room()  # the burst inside one minute window
    before = time.time()
    responses = await asyncio.gather(*(one() for _ in range(100)))
    left = seconds_left(end, before, time.time())
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 50 and statuses.count(429) == 50
    assert len(fake.requests) == 50
    refused = next(r for r in responses if r.status == 429)
    assert int(refused.headers["Retry-After"]) in left, (refused.headers, left)
    assert "50 requests per minute" in (await refused.json())["error"]
    passed = [r for r in responses if r.status == 200]
    assert {r.headers["X-RateLimit-Limit"] for r in passed} == {"50"}
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in passed) == list(range(50))
    assert {int(r.headers["X-RateLimit-Reset"]) for r in passed} <= set(left), left


async def test_concurrency_cap(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    fake.slow_interval = 0.2
    secret = await make_key(db_path, "cora", "two", limits=KeyLimits(max_concurrent=2))
    client = await _client(aiohttp_client, gateway, secret)

    async def one() -> int:
        resp = await client.post("/api/generate", data=b'{"model":"slow","prompt":"hi"}')
        await resp.read()
        return resp.status

    assert sorted(await asyncio.gather(one(), one(), one())) == [200, 200, 429]
    assert await one() == 200  # slots come back when requests end


async def test_token_quota_is_charged_from_ollamas_counts(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str
) -> None:
    # chat-nonstream.json reports 26 prompt + 6 completion tokens.
    await clock_room(DAY, 30)  # (the day's quota is counted within one day of the clock)
    secret = await make_key(db_path, "tom", "quota", limits=KeyLimits(tokens_per_day=40))
    client = await _client(aiohttp_client, gateway, secret)
    body = b'{"model":"llama3.2","stream":false}'
    assert (await client.post("/api/chat", data=body)).status == 200
    assert (await client.post("/api/chat", data=body)).status == 200  # 32 < 40: may start
    resp = await client.post("/api/chat", data=body)
    assert resp.status == 429
    assert "token quota" in (await resp.json())["error"]


async def test_default_limits_come_from_settings(
    aiohttp_client: AiohttpClient, settings: Settings, key: str
) -> None:
    app = create_app(Settings(**{**_fields(settings), "default_rph": 2}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    statuses = [(await client.get("/api/tags")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


# --- usage records -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "prompt", "completion"),
    [
        ("/api/chat", b'{"model":"llama3.2","stream":false}', 26, 6),
        ("/api/chat", b'{"model":"llama3.2"}', 26, 6),
        ("/api/generate", b'{"model":"llama3.2"}', 11, 4),
        ("/api/generate", b'{"model":"llama3.2","stream":false}', 11, 4),
        ("/api/embed", b'{"model":"all-minilm","input":["a","b"]}', 16, None),
        ("/api/show", b'{"name":"llama3.2"}', None, None),
        ("/api/tags", None, None, None),
    ],
)
async def test_usage_records_carry_ollamas_token_counts(
    client: TestClient[Request, None],
    db_path: str,
    path: str,
    body: bytes | None,
    prompt: int | None,
    completion: int | None,
) -> None:
    method = "GET" if body is None else "POST"
    resp = await client.request(method, path, data=body)
    sent = await resp.read()
    (record,) = await _usage(db_path, 1)
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert (record.user, record.key_name, record.method, record.route) == (
        "alice",
        "laptop",
        method,
        path.removeprefix("/api"),
    )
    assert record.status == 200 and record.bytes_out == len(sent)
    assert record.bytes_in == len(body or b"")
    named = orjson.loads(body) if body else {}
    name = named.get("model") or named.get("name")
    assert record.model_sent == name  # as sent, and its one identity
    assert record.model == (None if name is None else canonical(name))
    assert record.ttfb_ms is not None and 0 < record.ttfb_ms <= record.duration_ms
    assert not record.client_gone


async def test_a_client_that_left_early_is_recorded(
    gateway: TestServer,
    key: str,
    db_path: str,
    fake: FakeOllama,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigateway.access")

    async def call() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.make_url("/api/generate"),
                data=b'{"model":"stall"}',
                headers={"Authorization": f"Bearer {key}"},
            ) as resp,
        ):
            await resp.content.readline()
            await asyncio.sleep(60)

    task = asyncio.create_task(call())
    await eventually(lambda: len(fake.requests) == 1)
    await asyncio.sleep(0.2)
    task.cancel()
    (record,) = await _usage(db_path, 1)
    # The final counts never came: the one line that did is one token, and the prompt is
    # charged as estimated at admission (a quarter of the body's 17 bytes).
    assert record.client_gone and record.estimated
    assert (record.prompt_tokens, record.completion_tokens) == (4, 1)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    assert " user=alice " in line and " model=stall:latest status=499 " in line, line


async def test_old_usage_is_pruned(settings: Settings, db_path: str, key: str) -> None:
    store = await Store.open(db_path)
    old = UsageRecord(
        time.time() - 40 * 86400,
        1,
        "alice",
        "laptop",
        "POST",
        "/chat",
        "m",
        200,
        1,
        1,
        1.0,
        1.0,
        1,
        1,
        False,
    )
    await store.insert_usage([old, old._replace(ts=time.time())])
    await store.close()
    server = TestServer(create_app(Settings(**{**_fields(settings), "usage_retention_days": 30})))
    await server.start_server()
    await asyncio.sleep(0.6)
    await server.close()
    store = await Store.open(db_path)
    rows = await store.usage_rows()
    await store.close()
    assert len(rows) == 1 and rows[0].ts > time.time() - 60


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}
