"""The API of the systems aigateway replaces, under BASE_PATH beside Ollama's own routes,
so that their users' scripts change nothing but the host (docs/compat-api.md):

    GET    /api/models          any key: the /api/tags entries it may use, with context
                                length, description and price
    GET    /api/stats           any key: its own usage (as /admin/me's)
    GET    /api/keys            admin: every key
    POST   /api/keys            admin: create a key ({"name", "role", "rate_limit", "user"})
    DELETE /api/keys/{id}       admin: revoke a key by its id or its 12-character preview
    GET    /api/admin/stats     admin: totals, last 24 h and 7 d, per user

Each answer is made by the code that answers the admin API's counterpart (the model
list's filter, /admin/me's usage, /admin/stats' sections, the admin service); only the
shapes are the old systems'. SEED_API=off leaves the routes out (404). None of them is a
path Ollama serves: add_compat_routes refuses to shadow one.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..access.allowlist import identity
from ..errors import BadRequest
from ..http.appkeys import KEY_TABLE, SETTINGS, STORE
from ..http.auth import principal
from ..http.expect import defer_continue
from ..protocol.routes import RELAY_ROUTES
from ..records import MAX_LIMIT, ROLES, KeyLimits, KeyRecord, ModelInfo, UsageQuery
from ..settings import Settings
from . import service
from .api import admin_only, own_usage, price_view, stats_document, synced_models, usable_models
from .requests import json_response, key_id_param, read_body, reload_keys
from .views import utc_text

CREATE_FIELDS = frozenset({"name", "role", "rate_limit", "user"})
ADMIN_STATS_PARTS = frozenset({"totals", "last_24h", "last_7d", "per_user"})


async def models(request: web.Request) -> web.Response:
    """The /api/tags entries the caller's key may use, each as Ollama lists it, with its
    context length and a description from the last sync-models (null before one), and
    its price in force (micro-units of the currency; null: free)."""
    prices = request.app[KEY_TABLE].prices
    synced = await synced_models(request.app[STORE])
    shown = []
    for entry in await usable_models(request):
        info = synced.get(identity(entry["name"]))
        price = prices.for_model(entry["name"])
        shown.append(
            {
                **entry,
                "context_length": None if info is None else info.context_length,
                "description": None if info is None else description(info),
                "price": None if price is None else price_view(price),
            }
        )
    return json_response({"models": shown, "currency": request.app[SETTINGS].currency})


def description(info: ModelInfo) -> str | None:
    """A model in words, from what sync-models found: `llama, 7B parameters, Q4_0,
    context window of 4096 tokens`; None when it found nothing to say."""
    parts = [
        info.family,
        None if info.parameter_size is None else f"{info.parameter_size} parameters",
        info.quantization,
        None if info.context_length is None else f"context window of {info.context_length} tokens",
    ]
    said = [part for part in parts if part]
    return ", ".join(said) if said else None


async def own_stats(request: web.Request) -> web.Response:
    """The calling key, and its usage as /admin/me shows it."""
    caller = principal(request)
    usage = await own_usage(request.app[STORE], caller.id, time.time())
    return json_response({"key": key_view(caller), "usage": usage})


async def list_keys(request: web.Request) -> web.Response:
    return json_response({"keys": [key_view(r) for r in await request.app[STORE].list_keys()]})


async def create_key(request: web.Request) -> web.Response:
    """A new key: `name` (required), `role` (user or admin), `rate_limit` (requests per
    hour; null or absent: the gateway's DEFAULT_RPH; 0: none), `user` (default: the
    name). The key is in the answer, once."""
    body = await read_body(request, CREATE_FIELDS, required=frozenset({"name"}))
    for field in ("name", "user", "role"):
        if field in body and not isinstance(body[field], str):
            raise BadRequest(f"{field} must be a string")
    role = body.get("role", "user")
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}, not {role[:40]!r}")
    rate_limit = body.get("rate_limit")
    if rate_limit is not None and (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, int)
        or not 0 <= rate_limit <= MAX_LIMIT
    ):
        raise BadRequest(
            "rate_limit must be a whole number of requests per hour from 0 (no limit) to"
            f" {MAX_LIMIT}, or null (the gateway's default), not {str(rate_limit)[:40]}"
        )
    record, secret = await service.create_key(
        request.app[STORE],
        body.get("user", body["name"]),
        body["name"],
        role,
        limits=KeyLimits(rph=rate_limit),
    )
    await reload_keys(request)
    return json_response({"key": secret, **key_view(record)}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key named by its id (digits) or its preview (anything else)."""
    named = request.match_info["id"]
    store = request.app[STORE]
    if named.isascii() and named.isdigit():
        record = await service.revoke_key(store, key_id_param(request))
    else:
        record = await service.revoke_key_by_preview(store, named)
    await reload_keys(request)
    return json_response(key_view(record))


async def all_stats(request: web.Request) -> web.Response:
    """Every key's usage: totals, the last 24 hours and 7 days, per user (the sections
    of /admin/stats), and how many keys are active."""
    document = await stats_document(request, ADMIN_STATS_PARTS, UsageQuery())
    active = sum(1 for r in await request.app[STORE].list_keys() if r.status() == "active")
    return json_response({"active_keys": active, **document})


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the old systems listed it: metadata only, never the key or its hash."""
    return {
        "id": record.id,
        "preview": record.prefix,
        "name": record.name,
        "user": record.user,
        "role": record.role,
        "rate_limit": record.limits.rph,  # requests per hour; null: DEFAULT_RPH; 0: none
        "active": record.status() == "active",
        "status": record.status(),
        "created_at": utc_text(record.created_at),
        "last_used_at": utc_text(record.last_used_at),
    }


COMPAT_ROUTES = (
    ("GET", "/models", models),
    ("GET", "/stats", own_stats),
    ("GET", "/keys", admin_only(list_keys)),
    ("POST", "/keys", admin_only(create_key)),
    ("DELETE", "/keys/{id}", admin_only(revoke_key)),
    ("GET", "/admin/stats", admin_only(all_stats)),
)


def add_compat_routes(app: web.Application, settings: Settings) -> None:
    if settings.seed_api != "on":
        return
    prefix = settings.client_prefix(native=True)
    ollamas = {prefix + route.path for route in RELAY_ROUTES if route.native}
    for method, path, handler in COMPAT_ROUTES:
        if prefix + path in ollamas:  # (Ollama's route wins, always)
            raise RuntimeError(f"{prefix}{path} is Ollama's: the compatible API may not shadow it")
        app.router.add_route(method, prefix + path, handler, expect_handler=defer_continue)
