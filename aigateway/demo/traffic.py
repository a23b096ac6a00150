"""A little traffic through the demo's gateway, so that the dashboard has something to
show: a few chats (native and OpenAI-style), a stream, an embedding, and one request the
gateway refuses (a model outside the key's allow-list). All are sent at once; each must
get the status it should, or the demo stops and says which did not."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson

from .data import DemoKeys


class TrafficError(Exception):
    """A request of the demo's traffic got another status than it should."""


@dataclass(frozen=True)
class Call:
    key: str
    path: str
    body: dict[str, object]
    status: int  # what it should get


def _chat(model: str, text: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def calls(keys: DemoKeys, api: str, v1: str) -> list[Call]:
    """The requests, by path below the gateway's URL (`api`: BASE_PATH, `v1`: the
    OpenAI-compatible routes)."""
    return [
        Call(keys.user, f"{api}/chat", _chat("llama3.2", "Why is the sky blue?"), 200),
        Call(keys.user, f"{api}/chat", _chat("gemma3", "Tell me a story.", stream=True), 200),
        Call(keys.user, f"{v1}/chat/completions", _chat("qwen3-coder", "Write fizzbuzz."), 200),
        Call(
            keys.user,
            f"{api}/embed",
            {"model": "nomic-embed-text", "input": ["a gateway", "a GPU"]},
            200,
        ),
        Call(keys.restricted, f"{api}/chat", _chat("llama3.2", "Hi from my phone."), 200),
        Call(keys.restricted, f"{api}/chat", _chat("gemma3", "And this one?"), 403),
    ]


async def make_traffic(url: str, keys: DemoKeys, api: str, v1: str) -> None:
    """Send every call at once to the gateway at `url`."""
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(_send(session, url, call) for call in calls(keys, api, v1)))


async def _send(session: aiohttp.ClientSession, url: str, call: Call) -> None:
    headers = {"Authorization": f"Bearer {call.key}", "Content-Type": "application/json"}
    async with session.post(url + call.path, data=orjson.dumps(call.body), headers=headers) as resp:
        body = await resp.read()  # a stream is read to its end, as a client would
        if resp.status != call.status:
            raise TrafficError(
                f"POST {call.path} ({call.body.get('model')}) answered {resp.status}, not"
                f" {call.status}: {body[:200].decode(errors='replace')}"
            )
