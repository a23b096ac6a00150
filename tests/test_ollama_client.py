"""The official `ollama` Python client, pointed at the gateway, gets what Ollama sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ollama
import orjson
import pytest
from aiohttp.test_utils import TestServer

from aigateway.testing.fake_ollama import fixture


def _doc(name: str) -> Any:
    return orjson.loads(fixture(name))


def _lines(name: str) -> list[Any]:
    return [orjson.loads(line) for line in fixture(name).splitlines()]


def _as_sent(part: Any) -> dict[str, Any]:
    """What the client parsed, as plain JSON, without the fields it fills in as None."""
    dumped: dict[str, Any] = part.model_dump(exclude_none=True)
    return dumped


def _matches(part: Any, sent: dict[str, Any]) -> None:
    got = _as_sent(part)
    for field, value in sent.items():
        assert got[field] == value, field


@pytest.fixture
def host(gateway: TestServer) -> str:
    return str(gateway.make_url("")).rstrip("/")


@pytest.fixture
async def api(host: str, key: str) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=host, headers={"Authorization": f"Bearer {key}"})
    yield client
    await client.close()  # type: ignore[no-untyped-call]


async def test_chat(api: ollama.AsyncClient) -> None:
    reply = await api.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    _matches(reply, _doc("chat-nonstream.json"))


async def test_chat_streamed(api: ollama.AsyncClient) -> None:
    stream = await api.chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [part async for part in stream]
    sent = _lines("chat-stream.ndjson")
    assert len(parts) == len(sent)
    for part, line in zip(parts, sent, strict=True):
        _matches(part, line)


async def test_generate_and_generate_streamed(api: ollama.AsyncClient) -> None:
    _matches(await api.generate(model="llama3.2", prompt="Why?"), _doc("generate-nonstream.json"))
    stream = await api.generate(model="llama3.2", prompt="Why?", stream=True)
    parts = [part async for part in stream]
    for part, line in zip(parts, _lines("generate-stream.ndjson"), strict=True):
        _matches(part, line)


async def test_embed_list_show_ps(api: ollama.AsyncClient) -> None:
    _matches(await api.embed(model="all-minilm", input=["a", "b"]), _doc("embed.json"))
    listed = await api.list()
    assert [m.model for m in listed.models] == [m["model"] for m in _doc("tags.json")["models"]]
    assert listed.models[0].digest == _doc("tags.json")["models"][0]["digest"]
    shown = await api.show("llama3.2")
    assert shown.modelfile == _doc("show.json")["modelfile"]
    assert shown.capabilities == _doc("show.json")["capabilities"]
    running = await api.ps()
    assert running.models[0].size_vram == _doc("ps.json")["models"][0]["size_vram"]


async def test_ollama_errors_reach_the_client(api: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await api.chat(model="llama9", messages=[])
    assert info.value.status_code == 404
    assert info.value.error == "model 'llama9' not found"
    stream = await api.generate(model="midway-error", prompt="x", stream=True)
    with pytest.raises(ollama.ResponseError, match="an error was encountered"):
        async for _ in stream:
            pass


async def test_ollama_api_key_variable_is_enough(
    host: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    client = ollama.AsyncClient(host=host)
    listed = await client.list()
    await client.close()  # type: ignore[no-untyped-call]
    assert len(listed.models) == 2


async def test_a_client_without_a_key_gets_a_401(host: str) -> None:
    client = ollama.AsyncClient(host=host)
    with pytest.raises(ollama.ResponseError) as info:
        await client.list()
    await client.close()  # type: ignore[no-untyped-call]
    assert info.value.status_code == 401
    assert "missing API key" in info.value.error
