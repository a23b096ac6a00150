"""Read the model a request names, for the access log and usage records, without
changing the bytes that are sent on."""

from __future__ import annotations

import re
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
