"""Conformance with the official SDKs, pointed at the gateway in front of the fake Ollama."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import ollama
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from aigateway.db.store import Store
from aigateway.records import KeyLimits
from aigateway.testing.fake_ollama import fixture

from .conftest import make_key
from .helpers import clock_room, eventually, minute_room, node_client_ready, seconds_left
from .test_policy import secret_known

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


def _doc(name: str) -> Any:
    return orjson.loads(fixture(name))


async def _usage_counts(db_path: str, count: int) -> list[tuple[int | None, int | None]]:
    """Token counts of the usage records, once `count` of them are written."""
    for _ in range(50):
        store = await Store.open(db_path)
        rows = await store.usage_rows()
        await store.close()
        if len(rows) >= count:
            break
        await asyncio.sleep(0.1)
    return [(r.prompt_tokens, r.completion_tokens) for r in rows]


@pytest.fixture
async def limited_key(gateway: TestServer, db_path: str) -> str:
    secret = await make_key(db_path, "lena", "limited", models=["llama3*"], limits=KeyLimits(rpm=1))
    await eventually(lambda: secret_known(gateway, secret))
    return secret


# --- openai ------------------------------------------------------------------------------


@pytest.fixture
async def oai(gateway: TestServer, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    yield client
    await client.close()


async def test_openai_chat(oai: openai.AsyncOpenAI, db_path: str) -> None:
    chat = await oai.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model_dump(exclude_none=True)["choices"] == _doc("openai-chat.json")["choices"]
    assert chat.usage is not None and chat.usage.prompt_tokens == 26
    stream = await oai.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert await _usage_counts(db_path, 2) == [(26, 2), (26, 2)]


async def test_openai_completions_embeddings_and_models(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model="llama3.2", prompt="hi")
    assert completion.choices[0].text == "Hello"
    stream = await oai.completions.create(model="llama3.2", prompt="hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Hello"
    embedding = await oai.embeddings.create(model="all-minilm", input="a")
    assert embedding.data[0].embedding == _doc("openai-embeddings.json")["data"][0]["embedding"]
    listed = [m.id async for m in oai.models.list()]
    assert listed == [m["id"] for m in _doc("openai-models.json")["data"]]
    assert (await oai.models.retrieve("llama3.2")).id == "llama3.2"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nothing-here")


async def test_openai_error_classes(gateway: TestServer, limited_key: str) -> None:
    url = str(gateway.make_url("/v1"))
    bad = openai.AsyncOpenAI(base_url=url, api_key="aig_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        await bad.models.list()
    # OpenAI's wording, which LiteLLM and others sort as an authentication error.
    message = auth.value.body["message"]  # type: ignore[index]
    assert message.startswith("Incorrect API key provided (unknown API key).")
    assert auth.value.code == "invalid_api_key"
    assert "aig_" not in message
    await bad.close()
    limited = openai.AsyncOpenAI(base_url=url, api_key=limited_key, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await limited.chat.completions.create(model="qwen3", messages=messages)
    assert "may not use the model 'qwen3'" in denied.value.message
    end = await minute_room()  # the one request a minute, and the next, in one minute
    await limited.chat.completions.create(model="llama3.2", messages=messages)
    before = time.time()
    with pytest.raises(openai.RateLimitError) as limited_error:
        await limited.chat.completions.create(model="llama3.2", messages=messages)
    retry_after = int(limited_error.value.response.headers["retry-after"])
    assert retry_after in seconds_left(end, before, time.time()), retry_after
    await limited.close()


async def test_openai_models_show_an_allow_listed_key_only_its_models(
    gateway: TestServer, db_path: str
) -> None:
    secret = await make_key(db_path, "lou", "llama-only", models=["llama3*"])
    await eventually(lambda: secret_known(gateway, secret))
    client = openai.AsyncOpenAI(
        base_url=str(gateway.make_url("/v1")), api_key=secret, max_retries=0
    )
    try:
        assert [m.id async for m in client.models.list()] == ["llama3.2:latest"]
        assert (await client.models.retrieve("llama3.2")).id == "llama3.2"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("deepseek-r1")
    finally:
        await client.close()


# --- anthropic ---------------------------------------------------------------------------


@pytest.fixture
async def claude(gateway: TestServer, key: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")).rstrip("/"), api_key=key, max_retries=0
    )
    yield client
    await client.close()


async def test_anthropic_messages(claude: anthropic.AsyncAnthropic, db_path: str) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    message = await claude.messages.create(model="qwen3-coder", max_tokens=10, messages=messages)
    assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 2)
    async with claude.messages.stream(
        model="qwen3-coder", max_tokens=10, messages=messages
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello!" and final.stop_reason == "end_turn"
    assert await _usage_counts(db_path, 2) == [(12, 2), (12, 2)]


async def test_anthropic_error_classes(gateway: TestServer, limited_key: str) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    messages: Any = [{"role": "user", "content": "hi"}]
    bad = anthropic.AsyncAnthropic(base_url=base, api_key="aig_" + "y" * 43, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        await bad.messages.create(model="llama3.2", max_tokens=5, messages=messages)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    await bad.close()
    # auth_token is sent as Authorization: Bearer, api_key as x-api-key: both work.
    limited = anthropic.AsyncAnthropic(base_url=base, auth_token=limited_key, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        await limited.messages.create(model="claude-x", max_tokens=5, messages=messages)
    end = await minute_room()  # the one request a minute, and the next, in one minute
    await limited.messages.create(model="llama3.2", max_tokens=5, messages=messages)
    before = time.time()
    with pytest.raises(anthropic.RateLimitError) as limited_error:
        await limited.messages.create(model="llama3.2", max_tokens=5, messages=messages)
    retry_after = int(limited_error.value.response.headers["retry-after"])
    assert retry_after in seconds_left(end, before, time.time()), retry_after
    await limited.close()


# --- ollama (Python): every native route ---------------------------------------------------


async def test_ollama_python_on_every_native_route(
    gateway: TestServer, admin_key: str, tmp_path: Path
) -> None:
    client = ollama.AsyncClient(
        host=str(gateway.make_url("")).rstrip("/"),
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    try:
        messages: Any = [{"role": "user", "content": "hi"}]
        assert (await client.chat(model="llama3.2", messages=messages)).message.content == (
            "Hello! How can I help?"
        )
        parts = [
            p async for p in await client.chat(model="llama3.2", messages=messages, stream=True)
        ]
        assert "".join(p.message.content or "" for p in parts) == "Hello! How can I help?"
        assert (
            await client.generate(model="llama3.2", prompt="Why?")
        ).response == "The sky is blue."
        assert len((await client.embed(model="all-minilm", input=["a", "b"])).embeddings) == 2
        assert (await client.embeddings(model="all-minilm", prompt="a")).embedding[0] == (
            _doc("embeddings-legacy.json")["embedding"][0]
        )
        assert len((await client.list()).models) == 2
        assert (await client.show("llama3.2")).capabilities == ["completion", "tools"]
        assert (await client.ps()).models[0].name == "mistral:latest"
        assert (await client.pull("llama3.2")).status == "success"
        assert [p.status async for p in await client.pull("llama3.2", stream=True)][-1] == "success"
        assert (await client.push("me/llama3.2")).status == "success"
        made = [p.status async for p in await client.create("mine", from_="llama3.2", stream=True)]
        assert made[-1] == "success"
        assert (await client.copy("llama3.2", "mine")).status == "success"
        assert (await client.delete("mine")).status == "success"
        blob = tmp_path / "model.gguf"
        blob.write_bytes(b"GGUF not really a model")
        digest = await client.create_blob(blob)
        assert digest.startswith("sha256:")
    finally:
        await client.close()  # type: ignore[no-untyped-call]


# --- ollama (JavaScript, through node) -----------------------------------------------------


async def test_ollama_js_streamed_chat(gateway: TestServer, key: str) -> None:
    reason = node_client_ready()
    if reason:
        pytest.skip(reason)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "chat.mjs"),
        env={**os.environ, "GATEWAY": str(gateway.make_url("")).rstrip("/"), "KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["text"] == "Hello! How can I help?"
    assert result["done"] is True and result["eval_count"] == 6


# --- a limit that resets in hours is not slept out ---------------------------------------


async def test_sdks_do_not_sleep_out_an_hourly_limit(gateway: TestServer, db_path: str) -> None:
    """A 429 whose Retry-After is over a minute says x-should-retry: false and when the
    limit resets: each SDK (with its default retries) makes one request and raises at
    once. On 31b9ff2 the Anthropic SDK slept out the Retry-After (an hour here)."""
    # The hour's limit is a window of the clock: in its last minute its refusal would
    # rightly let the SDKs retry (Retry-After under a minute). Start with room in it.
    await clock_room(3600, 75)
    secret = await make_key(db_path, "hana", "hourly", limits=KeyLimits(rph=1))
    await eventually(lambda: secret_known(gateway, secret))
    sent: list[str] = []

    async def count(request: httpx2.Request) -> None:
        sent.append(request.url.path)

    def http() -> httpx2.AsyncClient:
        return httpx2.AsyncClient(event_hooks={"request": [count]})

    oai = openai.AsyncOpenAI(
        base_url=str(gateway.make_url("/v1")), api_key=secret, http_client=http()
    )
    claude = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")), api_key=secret, http_client=http()
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    await oai.chat.completions.create(model="llama3.2", messages=messages)  # the hour's one
    for call in (
        lambda: oai.chat.completions.create(model="llama3.2", messages=messages),
        lambda: claude.messages.create(model="llama3.2", max_tokens=9, messages=messages),
    ):
        sent.clear()
        started = asyncio.get_running_loop().time()
        with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as refused:
            await asyncio.wait_for(call(), 10)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert len(sent) == 1, sent
        assert "resets at" in str(refused.value)
    await oai.close()
    await claude.close()
