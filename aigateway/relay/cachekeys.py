"""Which requests the response cache may answer, and under which key (docs/cache.md).

A request may be answered from the cache when its route is one of CACHE_ROUTES (a
generation route only when the request fixes its sampling), its model is one of
CACHE_MODELS, and the upstreams agree on the model's digest. Its key is the scope
(CACHE_SCOPE: the key's user, the key, or nobody), the method, the route, the query,
the model's one identity, that digest and the exact body sent upstream: a hash of them,
so that no body is held twice.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from ..access.allowlist import model_allowed
from ..protocol.body import FULL_PARSE_LIMIT, fixed_sampling
from ..protocol.routes import GENERATION_PATHS, RelayRoute
from ..records import KeyRecord
from ..settings import Settings
from ..upstreams.cache import ResponseCache
from ..upstreams.pool import Pool


class RelayCache:
    """The cache as the relay uses it: the answers kept, and the settings that decide
    which requests they may answer."""

    __slots__ = ("answers", "free_hits", "models", "routes", "scope")

    def __init__(self, settings: Settings, answers: ResponseCache) -> None:
        self.answers = answers
        self.routes = frozenset(settings.cache_routes)  # Ollama paths
        self.models = settings.cache_models
        self.scope = settings.cache_scope
        self.free_hits = settings.cache_hit_price == "free"

    def covers(self, route: RelayRoute, model: str | None) -> bool:
        """Whether a request of `route` for `model` may be looked for (its body aside)."""
        return (
            route.ollama_path in self.routes
            and model is not None
            and model_allowed(model, self.models)
        )

    async def key_for(
        self,
        request: web.Request,
        route: RelayRoute,
        principal: KeyRecord,
        model: str,
        body: bytes,
        pool: Pool,
    ) -> bytes | None:
        """The key a request's answer is kept under, or None when it may not be kept: a
        generation that does not fix its sampling, or a model whose digest the upstreams
        do not agree on. (Large bodies are read and hashed off the event loop.)"""
        digest = pool.digest_of(model)
        if digest is None:
            return None
        if len(body) > FULL_PARSE_LIMIT:
            return await asyncio.to_thread(
                self._key, request, route, principal, model, digest, body
            )
        return self._key(request, route, principal, model, digest, body)

    def _key(
        self,
        request: web.Request,
        route: RelayRoute,
        principal: KeyRecord,
        model: str,
        digest: str,
        body: bytes,
    ) -> bytes | None:
        path = route.ollama_path
        if path in GENERATION_PATHS and not fixed_sampling(body, route.native):
            return None
        if self.scope == "global":
            scope = ""
        elif self.scope == "user" and principal.user_id is not None:
            scope = f"user {principal.user_id}"
        else:
            scope = f"key {principal.id}"
        head = "\n".join(
            (scope, request.method, path, request.rel_url.raw_query_string, model, digest)
        )
        hashed = hashlib.sha256(head.encode("utf-8", "surrogateescape") + b"\n")
        hashed.update(body)
        return hashed.digest()
