"""Per-key model allow-lists: which model a request names, whether a key may use it,
and model lists (tags, ps, /v1/models) cut down to what the key may see."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import orjson

from .bodypeek import FULL_PARSE_LIMIT, first_name
from .errors import BadRequest, Forbidden


def model_allowed(model: str, patterns: Iterable[str]) -> bool:
    """Shell-style patterns (`llama3*`, `qwen2.5:0.5b`); `llama3` and `llama3:latest`
    are the same model to Ollama, so they are to the allow-list too."""
    names = {model}
    if ":" not in model:
        names.add(model + ":latest")
    elif model.endswith(":latest"):
        names.add(model.removesuffix(":latest"))
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)


async def check_request(body: bytes, fields: tuple[str, ...], patterns: tuple[str, ...]) -> str:
    """The model the body names, if every model it names is allowed; else 400/403.
    With an allow-list, a body we cannot read is refused, never passed on."""
    doc = await _parse(body)
    if not isinstance(doc, dict):
        raise BadRequest(
            "this key may only use some models, and the request body is not"
            " a JSON object naming one"
        )
    named = [doc[f] for f in fields if isinstance(doc.get(f), str) and doc[f]]
    if not named:
        raise Forbidden(
            f"this key may only use the models {', '.join(patterns)}; the request"
            f" names none (field {fields[0]!r})"
        )
    for model in named:
        if not model_allowed(model, patterns):
            raise Forbidden(
                f"this key may not use the model {model!r} (allowed: {', '.join(patterns)})"
            )
    return str(named[0])


async def _parse(body: bytes) -> Any:
    try:
        if len(body) > FULL_PARSE_LIMIT:  # big embed batches: off the event loop
            return await asyncio.to_thread(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def filter_model_list(body: bytes, patterns: tuple[str, ...]) -> bytes:
    """A model list cut down to the allowed models: Ollama's `{"models": [...]}` (tags,
    ps, entries named by `name`/`model`) or OpenAI's `{"data": [...]}` (/v1/models,
    entries named by `id`). Anything else is returned as it is."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    for field, names in (("models", ("name", "model")), ("data", ("id",))):
        entries = doc.get(field)
        if isinstance(entries, list):
            doc[field] = [
                entry
                for entry in entries
                if isinstance(entry, dict)
                and model_allowed(first_name(entry, names) or "", patterns)
            ]
            return orjson.dumps(doc)
    return body
