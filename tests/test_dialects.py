"""The gateway's own errors in each caller's dialect, the /v1 prefix, and CORS."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient

from aigateway import Settings, create_app
from aigateway.testing.fake_ollama import FakeOllama, fixture

from .test_relay import _fields


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/api/chat",
            {
                "error": "missing API key: send 'Authorization: Bearer <API key>'",
                "reason": "missing_key",
            },
        ),
        (
            "/v1/chat/completions",
            {
                "error": {
                    "message": "You didn't provide an API key. You need to provide your API"
                    " key in an Authorization header using Bearer auth (i.e. Authorization:"
                    " Bearer YOUR_KEY).",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                    "reason": "missing_key",
                }
            },
        ),
        (
            "/v1/messages",
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "missing API key: send 'Authorization: Bearer <API key>'",
                    "reason": "missing_key",
                },
            },
        ),
    ],
)
async def test_401_in_each_dialect(
    anon: TestClient[Request, None], path: str, expected: object
) -> None:
    resp = await anon.post(path, data=b"{}")
    assert resp.status == 401
    assert await resp.json() == expected


async def test_own_404_in_openai_shape_and_upstream_errors_untouched(
    client: TestClient[Request, None],
) -> None:
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found_error"
    # Upstream errors pass through untouched, whatever the dialect.
    resp = await client.post("/v1/messages", data=b'{"model":"llama9","max_tokens":1}')
    assert resp.status == 404 and await resp.read() == fixture("anthropic-error-404.json")


async def test_v1_sits_beside_base_path(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, fake: FakeOllama
) -> None:
    app = create_app(
        Settings(**cast("dict[str, Any]", {**_fields(settings), "base_path": "/ollama/api"}))
    )
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    resp = await client.get("/ollama/v1/models")
    assert resp.status == 200 and await resp.read() == fixture("openai-models.json")
    assert fake.requests[-1].path_qs == "/v1/models"
    assert (await client.get("/v1/models")).status == 404


@pytest.fixture
async def cors(
    aiohttp_client: AiohttpClient, settings: Settings, key: str
) -> TestClient[Request, Application]:
    app = create_app(
        Settings(
            **cast(
                "dict[str, Any]",
                {**_fields(settings), "cors_origins": ("https://app.example.com",)},
            )
        )
    )
    return await aiohttp_client(app)


async def test_preflight_is_answered_without_a_key(
    cors: TestClient[Request, Application], fake: FakeOllama
) -> None:
    resp = await cors.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": (
                "authorization, content-type, x-api-key, anthropic-version, openai-beta,"
                " x-stainless-os, x-evil"
            ),
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    granted = {h.strip() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert granted == {
        "authorization",
        "content-type",
        "x-api-key",
        "anthropic-version",
        "openai-beta",
        "x-stainless-os",
    }
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert fake.requests == []


async def test_unlisted_origins_get_no_cors_headers(
    cors: TestClient[Request, Application], key: str
) -> None:
    resp = await cors.options(
        "/api/chat",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await cors.get(
        "/api/tags", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_listed_origins_can_read_streams_and_errors(
    cors: TestClient[Request, Application], key: str, fake: FakeOllama
) -> None:
    origin = {"Origin": "https://app.example.com"}
    resp = await cors.post(
        "/api/chat",
        data=b'{"model":"llama3.2"}',
        headers={**origin, "Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200 and await resp.read() == fixture("chat-stream.ndjson")
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-RateLimit-Remaining" in resp.headers["Access-Control-Expose-Headers"]
    assert "Origin" not in fake.requests[-1].headers
    resp = await cors.post("/api/chat", data=b"{}", headers=origin)
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_any_origin(aiohttp_client: AiohttpClient, settings: Settings, key: str) -> None:
    app = create_app(
        Settings(**cast("dict[str, Any]", {**_fields(settings), "cors_origins": ("*",)}))
    )
    client = await aiohttp_client(app)
    resp = await client.get(
        "/api/tags", headers={"Origin": "http://localhost:5173", "x-api-key": key}
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_setting() -> None:
    settings = Settings.from_env(
        {"CORS_ORIGINS": "https://a.example, http://localhost:3000/"}, env_file=None
    )
    assert settings.cors_origins == ("https://a.example", "http://localhost:3000")
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": "a.example"}, env_file=None)


async def test_browser_fetch_shape_with_aiohttp(
    cors: TestClient[Request, Application], key: str
) -> None:
    # What a page's fetch() sends for a streamed OpenAI chat: preflight, then the POST.
    async with aiohttp.ClientSession() as session:
        url = cors.make_url("/v1/chat/completions")
        headers = {"Origin": "https://app.example.com"}
        async with session.options(
            url, headers={**headers, "Access-Control-Request-Method": "POST"}
        ) as r:
            assert r.status == 204
        async with session.post(
            url,
            headers={**headers, "Authorization": f"Bearer {key}"},
            json={"model": "llama3.2", "messages": [], "stream": True},
        ) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
