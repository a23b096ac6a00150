"""Read the model a request names, for the access log and usage records, without
changing the bytes that are sent on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# Bodies up to this size are parsed fully; bigger ones (large embed batches) are only
# searched near the start, because parsing 50 MB on the event loop would stall streams.
FULL_PARSE_LIMIT = 1024 * 1024
_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,256})"')


def peek_model(body: bytes, fields: tuple[str, ...] = ("model",)) -> str | None:
    """The first of `fields` that holds a string (`model`, or `name` in older clients)."""
    if not fields or not body or body.lstrip()[:1] != b"{":
        return None
    if len(body) <= FULL_PARSE_LIMIT:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return first_name(doc, fields) if isinstance(doc, dict) else None
    match = _MODEL_RE.search(body, 0, 64 * 1024)
    return match.group(1).decode("utf-8", "replace") if match else None


def first_name(doc: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The first of `fields` in `doc` that holds a non-empty string."""
    for field in fields:
        value = doc.get(field)
        if isinstance(value, str) and value:
            return value
    return None


class UndecidableBody(Exception):
    """The body cannot be read the way Ollama will read it; the message says why."""


@dataclass(slots=True)
class BodyFields:
    """What Ollama will read from a request body (interim: plain orjson reading)."""

    models: tuple[str, ...] = ()
    model: str | None = None
    stream: bool | None = None
    include_usage: bool | None = None
    max_output: int | None = None


def read_body(body: bytes, fields: tuple[str, ...]) -> BodyFields:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UndecidableBody("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise UndecidableBody("the request body is not a JSON object")
    models = tuple(doc[f] for f in fields if isinstance(doc.get(f), str) and doc[f])
    stream = doc.get("stream")
    options = doc.get("stream_options")
    include = options.get("include_usage") if isinstance(options, dict) else None
    limit = None
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(doc.get(name), int):
            limit = doc[name]
    opts = doc.get("options")
    if isinstance(opts, dict) and isinstance(opts.get("num_predict"), int):
        limit = opts["num_predict"]
    return BodyFields(
        models,
        models[0] if models else None,
        stream if isinstance(stream, bool) else None,
        include if isinstance(include, bool) else None,
        limit,
    )
