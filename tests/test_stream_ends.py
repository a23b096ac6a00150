"""Streams counted however they end, and ended so that each dialect's client can tell
when they were cut: OpenAI streams without include_usage, Ollama's side breaking, an
upstream that sends less than it announced, and a graceful stop with streams open."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.testing.fake_ollama import FakeOllama

from .test_policy import _usage
from .test_server_process import start_gateway

MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def _direct(upstream: TestServer, path: str, body: bytes) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.make_url(path), data=body) as resp,
    ):
        return await resp.read()


# --- OpenAI streams are counted without include_usage ---------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "counts"),
    [
        (
            "/v1/chat/completions",
            b'{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}',
            (26, 2),
        ),
        ("/v1/completions", b'{"model":"llama3.2","prompt":"hi","stream":true}', (11, 1)),
        (  # include_usage false is the same as absent
            "/v1/chat/completions",
            b'{"model":"llama3.2","stream":true,"stream_options":{"include_usage":false},'
            b'"messages":[]}',
            (26, 2),
        ),
    ],
)
async def test_an_openai_stream_without_include_usage_is_counted_and_unchanged(
    client: TestClient[Request, None],
    upstream: TestServer,
    db_path: str,
    path: str,
    body: bytes,
    counts: tuple[int, int],
) -> None:
    want = await _direct(upstream, path, body)
    assert b'"usage"' not in want  # what Ollama sends when nobody asks for the counts
    resp = await client.post(path, data=body)
    assert await resp.read() == want
    (record,) = await _usage(db_path, 1)
    assert (record.prompt_tokens, record.completion_tokens) == counts
    assert record.bytes_out == len(want)


async def test_a_client_that_asks_for_usage_gets_it_unchanged(
    client: TestClient[Request, None], upstream: TestServer, fake: FakeOllama, db_path: str
) -> None:
    body = (
        b'{"model":"llama3.2","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
    )
    want = await _direct(upstream, "/v1/chat/completions", body)
    assert b'"choices":[],' in want
    assert await (await client.post("/v1/chat/completions", data=body)).read() == want
    assert fake.requests[-1].body == body
    (record,) = await _usage(db_path, 1)
    assert (record.prompt_tokens, record.completion_tokens) == (26, 2)


async def test_the_openai_sdk_sees_no_usage_chunk_it_did_not_ask_for(
    gateway: TestServer, key: str, db_path: str
) -> None:
    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    stream = await client.chat.completions.create(model="llama3.2", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    await client.close()
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    (record,) = await _usage(db_path, 1)
    assert (record.prompt_tokens, record.completion_tokens) == (26, 2)


# --- streams cut by Ollama's side -------------------------------------------------------------


async def test_the_openai_sdk_raises_on_a_cut_stream(
    gateway: TestServer, key: str, db_path: str
) -> None:
    """Before: the SDK iterated the cut stream to its end without an error."""
    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    stream = await client.chat.completions.create(model="broken", messages=MESSAGES, stream=True)
    got: list[Any] = []
    with pytest.raises(openai.APIError, match="the Ollama stream broke"):
        async for chunk in stream:
            got.append(chunk)
    await client.close()
    assert len(got) == 1  # the one event that came, then the error
    (record,) = await _usage(db_path, 1)
    # Charged for what came: one event of one token, and the prompt as estimated.
    assert record.completion_tokens == 1 and record.prompt_tokens


async def test_the_anthropic_sdk_raises_on_a_cut_stream(
    gateway: TestServer, key: str, db_path: str
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")).rstrip("/"), api_key=key, max_retries=0
    )
    text = ""
    with pytest.raises(anthropic.APIError, match="the Ollama stream broke"):
        async with client.messages.stream(
            model="broken", max_tokens=10, messages=MESSAGES
        ) as stream:
            async for event in stream:
                if event.type == "text":
                    text += event.text
    await client.close()
    assert text == "Hello"
    (record,) = await _usage(db_path, 1)
    # message_start's input tokens, and the one text delta that came.
    assert (record.prompt_tokens, record.completion_tokens) == (12, 1)


async def test_the_ollama_client_raises_on_a_cut_stream(gateway: TestServer, key: str) -> None:
    client = ollama.AsyncClient(
        host=str(gateway.make_url("")), headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with pytest.raises(ollama.ResponseError, match="the Ollama stream broke"):
            async for _ in await client.chat(model="broken", messages=MESSAGES, stream=True):
                pass
    finally:
        await client.close()  # type: ignore[no-untyped-call]


async def test_a_short_upstream_body_ends_the_clients_at_once(
    client: TestClient[Request, None],
) -> None:
    """Ollama's side announces 1,000 bytes and sends 100: before, the client waited for the
    rest for 100 s and more; now its connection is closed and it knows at once."""
    started = time.monotonic()
    resp = await client.post("/api/chat", data=b'{"model":"short","stream":false}')
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 10)
    assert time.monotonic() - started < 2


# --- a graceful stop with streams open ---------------------------------------------------------


async def test_sigterm_ends_open_streams_in_their_dialects_within_the_timeout(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> None:
    """Three streams the fake keeps open and one request Ollama never answers, then
    SIGTERM with SHUTDOWN_TIMEOUT=3: each SDK raises its error naming the stop, the
    waiting request gets 503, and the process is gone within the timeout."""
    gateway = await start_gateway(upstream, db_path, tmp_path, SHUTDOWN_TIMEOUT="3")
    started: list[str] = []

    async def native() -> None:
        client = ollama.AsyncClient(host=gateway.url, headers={"Authorization": f"Bearer {key}"})
        try:
            async for _ in await client.chat(model="stall", messages=MESSAGES, stream=True):
                started.append("ollama")
        finally:
            await client.close()  # type: ignore[no-untyped-call]

    async def chat_completions() -> None:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        stream = await client.chat.completions.create(model="stall", messages=MESSAGES, stream=True)
        async for _ in stream:
            started.append("openai")

    async def messages() -> None:
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)
        async with client.messages.stream(model="stall", max_tokens=9, messages=MESSAGES) as s:
            async for _ in s:
                started.append("anthropic")

    async def waiting() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
            session.post(gateway.url + "/api/chat", data=b'{"model":"silent"}') as resp,
        ):
            return resp.status, (await resp.json())["error"]

    streams = [asyncio.create_task(call()) for call in (native, chat_completions, messages)]
    silent = asyncio.create_task(waiting())
    deadline = time.monotonic() + 10
    while {"ollama", "openai", "anthropic"} - set(started):
        assert time.monotonic() < deadline, started
        await asyncio.sleep(0.05)
    stopped_at = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*streams, return_exceptions=True)
    assert await silent == (503, "the gateway is shutting down")
    await asyncio.to_thread(gateway.process.wait, 10)
    took = time.monotonic() - stopped_at
    assert 1.5 < took < 3.5, took  # SHUTDOWN_TIMEOUT less a second, then the ending
    assert gateway.process.returncode == 0
    native_error, openai_error, anthropic_error = outcomes
    assert isinstance(native_error, ollama.ResponseError)
    assert isinstance(openai_error, openai.APIError)
    assert isinstance(anthropic_error, anthropic.APIError)
    for error in outcomes:
        assert "the gateway is shutting down" in str(error), repr(error)
    rows = await _usage(db_path, 4)
    assert sorted(r.status for r in rows) == [200, 200, 200, 503]


async def test_a_stream_with_a_length_cut_short_is_charged_its_lines(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    settings: Settings,
    key: str,
    db_path: str,
) -> None:
    """An NDJSON stream that comes with a Content-Length (as through a buffering proxy)
    and breaks after three tokens is charged the three, like one without a length."""
    lines = b"".join(
        b'{"model":"llama3.2","message":{"role":"assistant","content":"a"},"done":false}\n'
        for _ in range(3)
    )

    async def cut_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.content_length = len(lines) + 500  # the rest never comes
        await response.prepare(request)
        await response.write(lines)
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", cut_stream)
    upstream = await aiohttp_server(app)
    gateway = create_app(replace(settings, ollama_base_url=str(upstream.make_url("")).rstrip("/")))
    client = await aiohttp_client(gateway, headers={"Authorization": f"Bearer {key}"})
    resp = await client.post("/api/chat", data=b'{"model":"llama3.2","messages":[]}')
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    (record,) = await _usage(db_path, 1)
    assert record.completion_tokens == 3 and record.estimated, record
