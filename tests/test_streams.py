"""The stream helpers alone: usage taken out whatever the network's chunking, the body
change that asks for it, and the tails that end a cut stream."""

from __future__ import annotations

import orjson
import pytest

from aigateway.protocol.streams import (
    NDJSON,
    SSE,
    UsageStripper,
    broken_stream_tail,
    counted_tokens,
    with_usage_requested,
)
from aigateway.testing.fake_ollama import fixture

CHAT_WITH_USAGE = fixture("openai-chat-stream-include-usage.sse")
COMPLETIONS_WITH_USAGE = fixture("openai-completions-stream-include-usage.sse")


def _without_usage(stream: bytes) -> bytes:
    """What Ollama sends when nobody asks for the counts (README of ollama-api)."""
    events = [e for e in stream.split(b"\n\n")[:-1] if b'"choices":[]' not in e]
    zero = b',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'
    return b"".join(e.replace(zero, b"") + b"\n\n" for e in events)


@pytest.mark.parametrize("stream", [CHAT_WITH_USAGE, COMPLETIONS_WITH_USAGE])
@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_the_stripper_gives_the_stream_without_usage_whatever_the_chunks(
    stream: bytes, size: int
) -> None:
    stripper = UsageStripper()
    out = b"".join(stripper.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    out += stripper.flush()
    assert out == _without_usage(stream)
    assert stripper.removed == len(stream) - len(out)


def test_an_event_waits_only_until_it_is_complete() -> None:
    stripper = UsageStripper()
    first, rest = CHAT_WITH_USAGE.split(b"\n\n", 1)
    assert stripper.feed(first) == b""
    assert stripper.feed(b"\n\n") == first + b"\n\n"
    assert stripper.feed(rest) == _without_usage(rest)


def test_content_that_mentions_usage_is_left_alone() -> None:
    event = b'data: {"choices":[{"delta":{"content":"\\"usage\\":{} and \\"choices\\":[]"}}]}\n\n'
    assert UsageStripper().feed(event) == event


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","stream":true}',
        b'{"model":"m","stream":true}\n',
        b'{"model":"m","stream":true,"stream_options":{"include_usage":false}}  ',
        b'{"model":"m","stream":true,"STREAM_OPTIONS":null}',
    ],
)
def test_usage_is_asked_for_as_the_last_key(body: bytes) -> None:
    changed = with_usage_requested(body)
    pairs = orjson.loads(changed)  # still one JSON object
    assert pairs["stream_options"] == {"include_usage": True}
    assert changed.rstrip().endswith(b',"stream_options":{"include_usage":true}}')
    assert changed.startswith(body.rstrip()[:-1])


def test_tails_by_dialect() -> None:
    assert broken_stream_tail(NDJSON, "ollama", "x") == b'{"error":"x"}\n'
    openai = broken_stream_tail(SSE, "openai", "x")
    assert openai is not None and openai.startswith(b"data: ") and openai.endswith(b"\n\n")
    assert orjson.loads(openai[6:])["error"]["message"] == "x"
    anthropic = broken_stream_tail(SSE, "anthropic", "x")
    assert anthropic is not None and anthropic.startswith(b"event: error\ndata: ")
    assert broken_stream_tail("application/json", "ollama", "x") is None


def test_tokens_counted_from_lines() -> None:
    assert counted_tokens(5, NDJSON, "ollama") == 5
    assert counted_tokens(6, SSE, "openai") == 3
    assert counted_tokens(3 * 5, SSE, "anthropic") == 3  # less message_start, block start
    assert counted_tokens(3, SSE, "anthropic") == 0
    assert counted_tokens(9, "application/json", "ollama") == 0
