"""The fake Ollama given a catalog (the demo's models): described as Ollama describes its
models; and given a pace, answering like a GPU, while the tests' fake stays fast."""

from __future__ import annotations

import time

import aiohttp
import orjson
from pytest_aiohttp import AiohttpServer

from aigateway.testing.fake_models import DEMO_MODELS, TOKENS, Pace
from aigateway.testing.fake_ollama import FakeOllama, fixture


async def test_the_catalog_is_described_as_ollama_does(aiohttp_server: AiohttpServer) -> None:
    fake = FakeOllama(catalog=DEMO_MODELS)
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession(str(server.make_url(""))) as session:
        async with session.get("/api/tags") as resp:
            tags = await resp.json()
        assert [m["name"] for m in tags["models"]] == [c.name for c in DEMO_MODELS]
        assert tags["models"][1]["details"]["parameter_size"] == "30.5B"
        async with session.post("/api/show", json={"model": "gemma3"}) as resp:
            shown = await resp.json()
        assert shown["model_info"]["gemma3.context_length"] == 131072
        assert shown["capabilities"] == ["completion", "vision"]
        async with session.get("/api/ps") as resp:
            assert await resp.json() == {"models": []}  # nothing used yet
        async with session.post(
            "/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]}
        ) as resp:
            vectors = (await resp.json())["embeddings"]
        assert [len(v) for v in vectors] == [768, 768] and vectors[0] != vectors[1]
        async with session.get("/api/ps") as resp:
            (loaded,) = (await resp.json())["models"]
        assert loaded["name"] == "nomic-embed-text:latest" and loaded["expires_at"].endswith("Z")
        async with session.post("/api/chat", json={"model": "mistral"}) as resp:
            assert resp.status == 404  # not in the catalog


async def test_a_paced_stream_comes_at_a_gpus_pace(aiohttp_server: AiohttpServer) -> None:
    pace = Pace(first_token_s=0.3, tokens_per_s=40.0)
    server = await aiohttp_server(FakeOllama(catalog=DEMO_MODELS, pace=pace).app())
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        async with session.post(server.make_url("/api/chat"), json=chat) as resp:
            first = await resp.content.readline()
            first_at = time.monotonic() - began
            lines = [first] + [line async for line in resp.content if line.strip()]
        took = time.monotonic() - began
    # (upper bounds with a second's room for a busy machine; the pace is the lower one)
    assert 0.3 <= first_at < 1.3, first_at
    *tokens, final = map(orjson.loads, lines)
    assert len(tokens) == len(TOKENS) and final["done"] is True
    assert final["eval_count"] == len(TOKENS)
    assert final["eval_duration"] == int(len(TOKENS) / 40 * 1e9)
    expected = 0.3 + (len(TOKENS) - 1) / 40
    assert expected <= took < expected + 1.0, took


async def test_the_tests_fake_is_not_paced(aiohttp_server: AiohttpServer) -> None:
    """Without a pace, a catalog model's answer is the fixture, as fast as ever."""
    server = await aiohttp_server(FakeOllama(catalog=DEMO_MODELS).app())
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/api/chat"), json={"model": "llama3.2"}) as resp,
    ):
        assert await resp.read() == fixture("chat-stream.ndjson")


async def test_openai_and_anthropic_answers_are_paced_too(aiohttp_server: AiohttpServer) -> None:
    pace = Pace(first_token_s=0.3, tokens_per_s=40.0)
    server = await aiohttp_server(FakeOllama(catalog=DEMO_MODELS, pace=pace).app())
    chat = {"model": "qwen3-coder", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/chat/completions", "/v1/messages"):  # whole answers
            began = time.monotonic()
            async with session.post(server.make_url(path), json=chat) as resp:
                assert resp.status == 200
                await resp.read()
            assert 0.3 <= time.monotonic() - began < 1.3, path
        began = time.monotonic()
        async with session.post(
            server.make_url("/v1/chat/completions"), json={**chat, "stream": True}
        ) as resp:
            events = (await resp.read()).split(b"\n\n")[:-1]
        # the first event after the first token's wait, each further one a token later
        expected = 0.3 + (len(events) - 1) / 40
        assert expected <= time.monotonic() - began < expected + 1.0
