"""sync-models: what Ollama says of each model it has (/api/tags, then /api/show for
each), kept in the `models` table so that price lists and reports can show a model's
family, size and context length without asking Ollama.

Ollama's answers are read as untrusted: a field that is not what it should be (a name
that is not printable text, a size that is not a whole number) is left empty, never
stored as it came.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..records import ModelInfo
from .transport import Transport, UpstreamFailed

MAX_TEXT = 200
MAX_MODELS = 10_000
SHOWS_AT_ONCE = 4


class ModelSyncError(Exception):
    """Ollama could not be asked, or did not answer as Ollama does; says which."""


def _text(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_TEXT and value.isprintable():
        return value
    return None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return None


async def fetch_models(
    base_url: str, headers: dict[str, str], timeout_s: float = 10.0
) -> list[ModelInfo]:
    """Every model Ollama at `base_url` lists, with what /api/show says of it (a model
    /api/show will not describe keeps what /api/tags said)."""
    transport = Transport(total_timeout=timeout_s, headers=headers, decompress=True)
    try:
        tags = await _get_json(transport, "GET", f"{base_url}/api/tags")
        listed = tags.get("models") if isinstance(tags, dict) else None
        if not isinstance(listed, list):
            raise ModelSyncError(f"{base_url}/api/tags did not answer with a list of models")
        entries = [e for e in listed[:MAX_MODELS] if isinstance(e, dict) and _text(e.get("name"))]
        gate = asyncio.Semaphore(SHOWS_AT_ONCE)

        async def described(entry: dict[str, Any]) -> ModelInfo:
            async with gate:
                try:
                    shown = await _get_json(
                        transport, "POST", f"{base_url}/api/show", {"model": entry["name"]}
                    )
                except ModelSyncError:
                    shown = {}
            return _info(entry, shown if isinstance(shown, dict) else {})

        return list(await asyncio.gather(*(described(e) for e in entries)))
    finally:
        await transport.close()


async def _get_json(transport: Transport, method: str, url: str, body: object = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    try:
        async with transport.send(method, url, data=data) as resp:
            raw = await resp.content.read(16 * 1024 * 1024)
            if resp.status != 200:
                raise ModelSyncError(f"{url} answered {resp.status}")
    except UpstreamFailed as exc:
        raise ModelSyncError(f"cannot reach Ollama at {url}: {exc.cause}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ModelSyncError(f"{url} did not answer with JSON") from None


def _info(entry: dict[str, Any], shown: dict[str, Any]) -> ModelInfo:
    details = shown.get("details") or entry.get("details") or {}
    if not isinstance(details, dict):
        details = {}
    model_info = shown.get("model_info")
    context = None
    if isinstance(model_info, dict):
        arch = _text(model_info.get("general.architecture"))
        if arch is not None:
            context = _count(model_info.get(f"{arch}.context_length"))
    return ModelInfo(
        name=str(entry["name"]),
        family=_text(details.get("family")),
        parameter_size=_text(details.get("parameter_size")),
        quantization=_text(details.get("quantization_level")),
        context_length=context,
        size=_count(entry.get("size")),
        digest=_text(entry.get("digest")),
    )
