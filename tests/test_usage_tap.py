"""The usage tap: token counts read from the passing bytes, however they are chunked."""

from __future__ import annotations

import random

import orjson
import pytest

from aigateway.testing.fake_ollama import fixture
from aigateway.usage.writer import TAIL_BYTES, UsageTap

CASES = [
    ("chat-stream.ndjson", (26, 6)),
    ("generate-stream.ndjson", (11, 4)),
    ("generate-nonstream.json", (11, 4)),
    ("chat-nonstream.json", (26, 6)),
    ("embed.json", (16, None)),
    ("openai-chat.json", (26, 2)),
    ("openai-chat-stream-include-usage.sse", (26, 2)),
    ("openai-completions-stream-include-usage.sse", (11, 1)),
    ("anthropic-messages.json", (12, 2)),
    ("anthropic-messages-stream.sse", (12, 2)),
    ("tags.json", (None, None)),
    ("pull-stream.ndjson", (None, None)),
]


def _counts(chunks: list[bytes]) -> tuple[int | None, int | None]:
    tap = UsageTap()
    for chunk in chunks:
        tap.feed(chunk)
    assert tap.total == sum(len(c) for c in chunks)
    return tap.counts()


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[name for name, _ in CASES])
def test_counts_whatever_the_chunking(name: str, expected: tuple[int | None, int | None]) -> None:
    data = fixture(name)
    rng = random.Random(name)
    assert _counts([data]) == expected
    for _ in range(20):
        assert _counts(_split(data, rng)) == expected
    # The same bytes with CRLF line ends, and without the final newline.
    assert _counts([data.replace(b"\n", b"\r\n")]) == expected
    assert _counts([data.rstrip(b"\n")]) == expected


def test_counts_at_the_end_of_a_stream_longer_than_the_tail() -> None:
    lines = fixture("chat-stream.ndjson").splitlines(keepends=True)
    body = lines[0] * (3 * TAIL_BYTES // len(lines[0])) + lines[-1]
    assert _counts([body[i : i + 1000] for i in range(0, len(body), 1000)]) == (26, 6)


def test_an_empty_response_has_no_counts() -> None:
    assert _counts([]) == (None, None)
    assert _counts([b""]) == (None, None)


def test_anthropic_input_tokens_come_from_message_start_when_the_delta_lacks_them() -> None:
    data = fixture("anthropic-messages-stream.sse")
    delta = b'"usage":{"input_tokens":12,"output_tokens":2}'
    assert delta in data
    data = data.replace(delta, b'"usage":{"output_tokens":2}')
    rng = random.Random(7)
    for _ in range(10):
        assert _counts(_split(data, rng)) == (12, 2)


@pytest.mark.parametrize("name", ["generate-nonstream.json", "embed.json", "openai-chat.json"])
def test_counts_of_a_long_final_object_are_found_at_its_end(name: str) -> None:
    # A generate context or a batch of embeddings makes the final object tens of KB.
    data = fixture(name)
    doc = orjson.loads(data)
    expected = _counts([data])
    doc = {"padding": list(range(20_000)), **doc}
    big = orjson.dumps(doc)
    assert len(big) > 4 * 4096
    assert _counts([big]) == expected
    assert _counts([big[i : i + 1500] for i in range(0, len(big), 1500)]) == expected


def test_counts_quoted_inside_a_string_are_not_taken_for_real_ones() -> None:
    # A long answer that talks about Ollama's fields, cut before its final line arrives.
    said = orjson.dumps({"message": {"content": 'x "eval_count": 7 "usage": {"a": 1}' * 300}})
    assert b'\\"eval_count\\": 7' in said
    assert _counts([said[:-10]]) == (None, None)
