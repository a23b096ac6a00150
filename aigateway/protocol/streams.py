"""What the relay does to a stream besides copying it.

- OpenAI-dialect streams carry token counts only when the client asked for them with
  `stream_options.include_usage`, which most clients do not. The relay asks Ollama for
  them anyway (`with_usage_requested`) and `UsageStripper` takes out of the stream what
  that added, so the client receives exactly the bytes it would have received without
  the gateway while the usage tap still sees the counts.
- A 200 stream may still carry a failure at its end: `ended_whole` tells a complete
  answer (one the response cache may repeat) from one that is not.
- A stream cut short (Ollama's side broke, or the gateway is stopping) must not look
  complete to the client: `broken_stream_tail` is the error each dialect's SDK raises on.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
STREAM_TYPES = frozenset((NDJSON, SSE))

_INCLUDE_USAGE = b',"stream_options":{"include_usage":true}'
# With include_usage, Ollama's /v1/completions adds this to every chunk before the last.
_ZERO_USAGE = b',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'


def with_usage_requested(body: bytes) -> bytes:
    """`body` (a JSON object with at least one key) with include_usage set. The key goes
    last: Go's decoder lets the last occurrence of a field win, whatever came before."""
    end = body.rstrip().rfind(b"}")
    return body[:end] + _INCLUDE_USAGE + body[end:]


class UsageStripper:
    """Removes from an OpenAI SSE stream the final `"choices":[]` usage chunk and the zero
    usage objects that include_usage added. Works on whole events: the bytes of an event
    not yet complete wait for the rest (a client cannot use half an event anyway); Ollama
    sends each event in one piece, so in practice nothing waits."""

    __slots__ = ("_partial", "removed")

    def __init__(self) -> None:
        self._partial = b""
        self.removed = 0  # bytes taken out, so the usage record counts what the client got

    def feed(self, chunk: bytes) -> bytes:
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n\n") + 2
        if cut == 1:  # no complete event yet
            self._partial = data
            return b""
        complete, self._partial = data[:cut], data[cut:]
        if b'"usage"' not in complete:
            return complete
        kept = [event for event in complete.split(b"\n\n")[:-1] if not _usage_only(event)]
        out = b"".join(event.replace(_ZERO_USAGE, b"") + b"\n\n" for event in kept)
        self.removed += len(complete) - len(out)
        return out

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest


def _usage_only(event: bytes) -> bool:
    """The chunk include_usage adds at the end: `"choices":[]` and the counts."""
    if not event.startswith(b"data:") or b'"choices":[]' not in event:
        return False
    try:
        doc = orjson.loads(event[5:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("choices") == [] and "usage" in doc


def broken_stream_tail(content_type: str, dialect: str, message: str) -> bytes | None:
    """What to write last into a stream that was cut, so the client raises: Ollama's own
    `{"error": ...}` line for NDJSON (the ollama clients raise ResponseError); for SSE, an
    event the openai SDK raises APIError on (`data: {"error": {...}}`) or the anthropic SDK
    raises on (`event: error`). None for a body with no such framing."""
    if content_type == NDJSON:
        return orjson.dumps({"error": message}) + b"\n"
    if content_type != SSE:
        return None
    if dialect == "anthropic":
        event = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    error = {"message": message, "type": "api_error", "param": None, "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def counted_tokens(newlines: int, content_type: str, dialect: str) -> int:
    """Completion tokens a stream cut before its final counts carried, counted from its
    lines: Ollama sends one line (NDJSON) or event per generated token. An OpenAI event is
    two lines (`data:` and a blank), an Anthropic one three (`event:`, `data:`, blank) and
    its first two events (message_start, content_block_start) carry no token."""
    if content_type == NDJSON:
        return newlines
    if content_type != SSE:
        return 0
    if dialect == "anthropic":
        return max(0, newlines // 3 - 2)
    return newlines // 2


def ended_whole(chunks: Sequence[bytes], content_type: str) -> bool:
    """Whether a 200 answer's body, as these chunks, ended the way its dialect ends a
    complete answer. Ollama answers a generation that fails midway (the runner died,
    memory ran out) with a 200 whose stream ends with an `{"error": ...}` line instead of
    its `"done": true` one, and an OpenAI stream so broken lacks its `data: [DONE]`; a
    body that is no stream is whole when it came whole."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in STREAM_TYPES:
        return True
    last = _last_line(chunks)
    if media == SSE:
        return last == b"data: [DONE]"
    try:
        doc = orjson.loads(last)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("done") is True and "error" not in doc


# How Ollama ends its answer to a generation that only loads or unloads its model (no
# prompt, or keep_alive 0): a few dozen bytes, its reason written as Go writes it.
_MODEL_ONLY = (b'"done_reason":"load"', b'"done_reason":"unload"')
_MODEL_ONLY_MOST = 1024


def loads_model_only(chunks: Sequence[bytes]) -> bool:
    """Whether an answer is Ollama's to a request that only loaded or unloaded its model:
    repeated from a cache it would do neither."""
    if sum(len(c) for c in chunks) > _MODEL_ONLY_MOST:
        return False
    body = b"".join(chunks)
    return any(mark in body for mark in _MODEL_ONLY)


def _last_line(chunks: Sequence[bytes]) -> bytes:
    """The last non-empty line of a body given as chunks, read from the end (joining only
    the chunks it spans)."""
    parts: list[bytes] = []
    for chunk in reversed(chunks):
        parts.append(chunk)
        if b"\n" in chunk.rstrip(b"\r\n" if len(parts) == 1 else b""):
            break
    tail = b"".join(reversed(parts)).rstrip(b"\r\n")
    return tail[tail.rfind(b"\n") + 1 :].rstrip(b"\r")
