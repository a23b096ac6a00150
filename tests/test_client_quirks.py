"""Client quirks the docs warn of, each shown with the real client library against a real
gateway in front of the fake Ollama: what the client sent (the Authorization header and
the status of every request that reached the gateway, the body that reached Ollama) and
what the workaround changes. docs/clients.md ("Known client quirks") words them for users."""

from __future__ import annotations

import os

# Haystack turns on its usage statistics (sent out to its makers) when it is imported,
# unless this says no: set before the import.
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any, Literal

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from haystack.dataclasses import ChatMessage
from haystack_integrations.components.embedders.ollama import OllamaTextEmbedder
from haystack_integrations.components.generators.ollama import OllamaChatGenerator
from ollama import ResponseError
from pydantic import BaseModel
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import Budget, Price
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.testing.structured import sample

from .conftest import make_key
from .helpers import NODE_DIR, node_client_ready


@dataclass(frozen=True)
class Arrival:
    """One request as it reached the gateway: its path, its Authorization header (None:
    none sent) and the status the gateway answered."""

    path: str
    authorization: str | None
    status: int


@dataclass
class Watched:
    server: TestServer
    arrivals: list[Arrival]

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def _watched(aiohttp_server: AiohttpServer, settings: Settings) -> Watched:
    """A gateway, with every request that reaches it noted (by a middleware before the
    gateway's own): the key it carried, the status it got."""
    arrivals: list[Arrival] = []

    @web.middleware
    async def note(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            arrivals.append(Arrival(request.path, authorization, exc.status))
            raise
        arrivals.append(Arrival(request.path, authorization, response.status))
        return response

    app = create_app(settings)
    app.middlewares.insert(0, note)
    return Watched(await aiohttp_server(app), arrivals)


@pytest.fixture
async def watched(
    aiohttp_server: AiohttpServer, settings: Settings, key: str, admin_key: str
) -> Watched:
    return await _watched(aiohttp_server, settings)


class City(BaseModel):
    name: str
    population: int


MESSAGES: Any = [{"role": "user", "content": "A city?"}]


class Country(BaseModel):
    capital: City
    cities: list[City]
    side: Literal["left", "right"]
    motto: str | None = None
    open: bool


def test_the_fake_fills_in_any_schema_pydantic_writes() -> None:
    """What the fake Ollama answers a request for JSON of a schema ($defs, a list, an
    enum, an optional field) is an instance of it."""
    country = Country.model_validate(sample(Country.model_json_schema()))
    assert country.capital == City(name="Hello!", population=2) and country.side == "left"
    assert sample({"type": "string", "format": "date"}) == "Hello!"
    assert sample({"$ref": "#/$defs/missing"}) is None


# --- instructor ----------------------------------------------------------------------------

# instructor 1.17.0 (the newest) pins jiter<0.15, and the openai SDK the dev extra brings
# (3.63) needs jiter>=0.16: pip's way out is openai 3.3.0, for every test. Installed
# beside it without its pins (pip install --no-deps instructor==1.17.0 typer regex), it
# works with them (this test passes); where it is not installed, the test skips, saying so.
INSTRUCTOR_MISSING = (
    "instructor is not in the dev extra (its jiter<0.15 pin would downgrade openai):"
    " pip install --no-deps instructor==1.17.0 typer regex"
)


async def test_instructor_from_provider_sends_a_placeholder_key_and_from_openai_the_key(
    watched: Watched, key: str, fake: FakeOllama
) -> None:
    instructor = pytest.importorskip("instructor", reason=INSTRUCTOR_MISSING)
    # from_provider takes api_key= out of its arguments before it builds the Ollama
    # client, which is then made with the placeholder "ollama" instead.
    dropped = instructor.from_provider(
        "ollama/llama3.2", base_url=f"{watched.base}/v1", api_key=key, async_client=True
    )
    errors = pytest.importorskip("instructor.core", reason=INSTRUCTOR_MISSING)
    with pytest.raises(errors.InstructorRetryException) as refused:
        await dropped.chat.completions.create(response_model=City, messages=MESSAGES)
    await dropped.client.close()
    # The gateway's 401, in OpenAI's words, under instructor's wrapper.
    assert isinstance(refused.value.__cause__, openai.AuthenticationError)
    assert "Incorrect API key provided (malformed API key" in str(refused.value)
    assert watched.arrivals == [Arrival("/v1/chat/completions", "Bearer ollama", 401)]
    assert not [r for r in fake.requests if r.path_qs == "/v1/chat/completions"]

    # The workaround: an OpenAI client made with the key, handed to instructor in the
    # mode from_provider picks for llama3.2 (tool calls).
    watched.arrivals.clear()
    async with openai.AsyncOpenAI(
        base_url=f"{watched.base}/v1", api_key=key, max_retries=0
    ) as client:
        patched = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
        city = await patched.chat.completions.create(
            model="llama3.2", response_model=City, messages=MESSAGES
        )
    assert city.model_dump() == {"name": "Hello!", "population": 2}
    assert watched.arrivals == [Arrival("/v1/chat/completions", f"Bearer {key}", 200)]


# --- Haystack (ollama-haystack) ------------------------------------------------------------


async def test_haystack_ollama_components_take_the_key_from_ollama_api_key(
    watched: Watched, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ollama-haystack's components take no key: each makes an ollama.Client(host=url,
    timeout=timeout) when it first runs (warm_up), and that client reads OLLAMA_API_KEY
    then and sends it as Authorization: Bearer."""
    hi = [ChatMessage.from_user("hi")]
    with ExitStack() as clients:  # each component's client closed at the end
        monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
        early = clients.enter_context(closing(OllamaChatGenerator("llama3.2", watched.base)))
        with pytest.raises(ResponseError) as refused:
            await asyncio.to_thread(early.run, messages=hi)
        assert refused.value.status_code == 401

        # Set after a component's first run, the key does not reach its client.
        monkeypatch.setenv("OLLAMA_API_KEY", key)
        with pytest.raises(ResponseError):
            await asyncio.to_thread(early.run, messages=hi)
        assert watched.arrivals == [Arrival("/api/chat", None, 401)] * 2

        # Set before a component's first run, it does.
        watched.arrivals.clear()
        generator = clients.enter_context(closing(OllamaChatGenerator("llama3.2", watched.base)))
        replies = (await asyncio.to_thread(generator.run, messages=hi))["replies"]
        assert replies[0].text == "Hello! How can I help?"
        embedder = clients.enter_context(closing(OllamaTextEmbedder("all-minilm", watched.base)))
        embedding = (await asyncio.to_thread(embedder.run, text="a"))["embedding"]
        assert len(embedding) > 0
    assert watched.arrivals == [
        Arrival("/api/chat", f"Bearer {key}", 200),
        Arrival("/api/embed", f"Bearer {key}", 200),
    ]


# --- Vercel AI SDK (node) ------------------------------------------------------------------


@pytest.fixture
def node_ready() -> None:
    reason = node_client_ready()
    if reason:
        pytest.skip(reason)


async def _ai_sdk(watched: Watched, key: str, **env: str) -> dict[str, Any]:
    """What tests/node/ai_sdk.mjs printed: what the SDK returned or threw."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "ai_sdk.mjs"),
        env={**os.environ, "GATEWAY": watched.base, "KEY": key, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
async def broke_key(db_path: str) -> str:
    """A key whose user has a daily budget of nothing, and a price on llama3.2."""
    secret = await make_key(db_path, "brook", "broke")
    store = await Store.open(db_path)
    try:
        await store.set_user_budget("brook", Budget(0, "daily"))
        await store.set_price(Price("llama3*", per_request=10_000))
    finally:
        await store.close()
    return secret


async def test_ai_sdk_retries_an_over_budget_429_unless_max_retries_is_0(
    node_ready: None, broke_key: str, aiohttp_server: AiohttpServer, settings: Settings
) -> None:
    watched = await _watched(aiohttp_server, settings)
    arrivals = watched.arrivals
    # The default: 1 request and maxRetries (2) more, each refused 429 insufficient_quota
    # with x-should-retry: false, which the AI SDK does not read.
    result = await _ai_sdk(watched, broke_key, CALL="text")
    assert result["ok"] is False and result["status"] == 429, result
    assert result["name"] == "AI_RetryError" and result["reason"] == "maxRetriesExceeded"
    assert "budget exhausted: user 'brook'" in result["message"]
    assert [a.status for a in arrivals] == [429, 429, 429]
    arrivals.clear()
    result = await _ai_sdk(watched, broke_key, CALL="text", MAX_RETRIES="0")
    assert result["ok"] is False and result["status"] == 429, result
    assert result["name"] == "AI_APICallError"
    assert [a.status for a in arrivals] == [429]


@pytest.mark.parametrize("call", ["object", "output"])
async def test_ai_sdk_sends_a_json_schema_only_with_supports_structured_outputs(
    node_ready: None, watched: Watched, key: str, fake: FakeOllama, call: str
) -> None:
    """generateObject, and generateText with Output.object (which ai 7 says to use
    instead), through @ai-sdk/openai-compatible."""

    def last_format() -> object:
        chats = [r for r in fake.requests if r.path_qs == "/v1/chat/completions"]
        return orjson.loads(chats[-1].body).get("response_format")

    # Without it: JSON mode, the schema left out of the request, and an answer that need
    # not fit it (the fake's JSON mode answers {}), which the SDK then refuses.
    result = await _ai_sdk(watched, key, CALL=call)
    assert last_format() == {"type": "json_object"}
    assert result["ok"] is False, result
    assert result["name"] == "AI_NoObjectGeneratedError"
    assert "did not match schema" in result["message"]

    result = await _ai_sdk(watched, key, CALL=call, STRUCTURED="1")
    sent = last_format()
    assert isinstance(sent, dict) and sent["type"] == "json_schema", sent
    assert sent["json_schema"]["schema"]["required"] == ["name", "population"]
    assert result == {"ok": True, "object": {"name": "Hello!", "population": 2}}
