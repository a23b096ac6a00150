"""Per-key model allow-lists: which model a request names, whether a key may use it,
and model lists (tags, ps, /v1/models) cut down to what the key may see."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import orjson

from .bodypeek import first_name
from .errors import Forbidden


def model_allowed(model: str, patterns: Iterable[str]) -> bool:
    """Shell-style patterns (`llama3*`, `qwen2.5:0.5b`); `llama3` and `llama3:latest`
    are the same model to Ollama, so they are to the allow-list too."""
    names = {model}
    if ":" not in model:
        names.add(model + ":latest")
    elif model.endswith(":latest"):
        names.add(model.removesuffix(":latest"))
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)


def check_models(
    models: tuple[str, ...], fields: tuple[str, ...], patterns: tuple[str, ...]
) -> None:
    """Every model a body names must be allowed, and it must name one; else 403."""
    if not models:
        raise Forbidden(
            f"this key may only use the models {', '.join(patterns)}; the request"
            f" names none (field {fields[0]!r})"
        )
    for model in models:
        if not model_allowed(model, patterns):
            raise Forbidden(
                f"this key may not use the model {model!r} (allowed: {', '.join(patterns)})"
            )


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
