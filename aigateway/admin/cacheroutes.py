"""The admin API's response cache (admin only): GET {ADMIN_PATH}/cache, whether this
gateway's cache is on, its settings and what it holds and did since start; DELETE
empties it. Each gateway keeps its own cache in memory (upstreams/cache.py), so both
speak of the gateway that answers only, and say so."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..errors import Conflict
from ..http.appkeys import SETTINGS
from ..http.auth import principal
from ..http.expect import defer_continue
from ..relay.state import RELAY
from ..settings import Settings
from .api import admin_only
from .now import NOW
from .requests import json_response

log = logging.getLogger("aigateway")

PER_GATEWAY = (
    "each gateway keeps its own response cache in memory: these are this gateway's"
    " (its id as Now shows it)"
)


def add_cache_routes(app: web.Application, prefix: str) -> None:
    for method, handler in (("GET", cache_view), ("DELETE", clear_cache)):
        guarded = admin_only(handler)
        app.router.add_route(method, prefix + "/cache", guarded, expect_handler=defer_continue)


async def cache_view(request: web.Request) -> web.Response:
    """Whether the cache is on, its settings, and (on) what it holds and did since the
    gateway started: hits, misses, hit rate, answers and bytes held, kept, evicted."""
    cache = request.app[RELAY].cache
    return json_response(
        {
            "enabled": cache is not None,
            "gateway": request.app[NOW].gateway,
            "per_gateway": PER_GATEWAY,
            "settings": cache_settings(request.app[SETTINGS]),
            "stats": None if cache is None else cache.answers.stats(),
        }
    )


async def clear_cache(request: web.Request) -> web.Response:
    """Drop every answer this gateway keeps (after a model was replaced by hand, say);
    how many. 409 when the cache is off: there is none to empty."""
    cache = request.app[RELAY].cache
    if cache is None:
        raise Conflict("the response cache is off on this gateway (CACHE_SIZE=0): nothing to clear")
    admin = principal(request)
    dropped = cache.answers.clear()
    log.info(
        "response cache cleared by %s/%s (key %d): %d answers dropped",
        admin.user, admin.name, admin.id, dropped,
    )  # fmt: skip
    return json_response({"dropped": dropped, "gateway": request.app[NOW].gateway})


def cache_settings(settings: Settings) -> dict[str, Any]:
    """The settings that shape the cache, by their names in the settings' docs."""
    return {
        "size": settings.cache_bytes,  # CACHE_SIZE, in bytes; 0: off
        "ttl_seconds": settings.cache_ttl,
        "routes": list(settings.cache_routes),
        "models": list(settings.cache_models),
        "scope": settings.cache_scope,
        "hit_price": settings.cache_hit_price,
    }
