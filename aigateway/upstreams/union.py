"""Model lists of several upstreams as one: /api/tags, /api/ps and /v1/models answer for
all of them, each model once."""

from __future__ import annotations

import asyncio

import orjson

from ..access.allowlist import ENTRY_NAMES, identity, model_allowed
from ..errors import ServiceUnavailable
from ..protocol.body import first_text_field
from ..protocol.routes import RELAY_ROUTES, RelayRoute
from .pool import FAILOVER_STATUSES, Pool, Upstream
from .probe import CheckFailed
from .transport import UpstreamFailed

TAGS = next(r for r in RELAY_ROUTES if r.native and r.path == "/tags")


def list_path(upstream: Upstream, route: RelayRoute) -> str:
    """Where an upstream keeps the list this route asks for."""
    if upstream.config.kind != "ollama":
        return "/models"
    return route.ollama_path


async def union_of_lists(pool: Pool, route: RelayRoute) -> bytes:
    """The lists of every upstream that is up and answers the route, merged: the first
    upstream's document with every upstream's entries, each model once (first seen
    wins), a cloud API's cut down to the models it is configured to serve."""
    field = "models" if route.native else "data"
    names = ENTRY_NAMES[field]
    asked = [u for u in pool.upstreams if u.up and u.fits(route)]
    answers = await asyncio.gather(*(_fetch(pool, u, route) for u in asked))
    merged: dict[str, object] | None = None
    entries: list[object] = []
    seen: set[str] = set()
    for upstream, doc in zip(asked, answers, strict=True):
        if doc is None:
            continue
        if merged is None:
            merged = doc
        found = doc.get(field)
        if not isinstance(found, list):
            continue
        patterns = upstream.config.models if upstream.config.kind != "ollama" else None
        for entry in found:
            name = first_text_field(entry, names) if isinstance(entry, dict) else None
            if name is None or (patterns is not None and not model_allowed(name, patterns)):
                continue
            known = identity(name)
            if known not in seen:
                seen.add(known)
                entries.append(entry)
    if merged is None:
        raise ServiceUnavailable("no upstream answered with its model list", {"Retry-After": "5"})
    merged[field] = entries
    return go_escaped(orjson.dumps(merged))


def go_escaped(compact: bytes) -> bytes:
    """orjson's compact JSON escaped as Go's encoding/json escapes it (`<` `>` `&`, U+2028
    and U+2029): a list merged from several Ollamas cannot be one's bytes, but reads as
    one's. (Those characters stand only inside strings, so the bytes may be swapped.)"""
    for raw, escape in _GO_ESCAPES:
        if raw in compact:
            compact = compact.replace(raw, escape)
    return compact


_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


async def _fetch(pool: Pool, upstream: Upstream, route: RelayRoute) -> dict[str, object] | None:
    """An upstream's list as a JSON object, or None (and it is counted as failed)."""
    try:
        status, body = await pool.fetch(upstream, list_path(upstream, route))
    except (UpstreamFailed, CheckFailed) as exc:
        cause = exc.cause if isinstance(exc, UpstreamFailed) else type(exc).__name__
        pool.failed(upstream, f"its model list failed: {cause}")
        return None
    if status != 200:
        if status in FAILOVER_STATUSES:
            pool.failed(upstream, f"its model list answered {status}")
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
