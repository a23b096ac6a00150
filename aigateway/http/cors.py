"""CORS for browser pages, from CORS_ORIGINS (a list, or `*`).

Ollama refuses browser origins it does not know, so the gateway never passes `Origin`
on and answers CORS itself: preflights (OPTIONS with Access-Control-Request-Method) get
204 without needing a key, and every response to a listed origin, errors included,
carries Access-Control-Allow-Origin so the page can read it. Origins not listed get no
CORS headers (and a preflight from one gets 403).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import json_error
from ..upstreams.cache import CACHE_HEADER
from .appkeys import SETTINGS

ALLOWED_HEADERS = frozenset(
    {
        "accept",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "anthropic-version",
        "authorization",
        "content-type",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "user-agent",
        "x-api-key",
        "x-requested-with",
    }
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
EXPOSED_HEADERS = (
    "X-Request-Id, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
    + CACHE_HEADER
)
MAX_AGE_S = "43200"  # 12 h, as Ollama's own CORS answers


def allowed_origin(request: web.Request) -> str | None:
    """The value for Access-Control-Allow-Origin, or None for no CORS headers."""
    origin = request.headers.get("Origin")
    origins = request.app[SETTINGS].cors_origins
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/") in origins else None


def _header_allowed(name: str) -> bool:
    name = name.strip().lower()
    return name in ALLOWED_HEADERS or name.startswith("x-stainless-")


def preflight_response(request: web.Request) -> web.StreamResponse | None:
    """The answer to a CORS preflight, which needs no key; None for any other request
    and when CORS is off (CORS_ORIGINS unset: an OPTIONS request is then relayed)."""
    if request.method != "OPTIONS" or not request.app[SETTINGS].cors_origins:
        return None
    if "Access-Control-Request-Method" not in request.headers:
        return None
    allow = allowed_origin(request)
    if allow is None:
        return json_error(403, "this origin is not allowed (CORS_ORIGINS)")
    requested = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Max-Age": MAX_AGE_S,
        "Vary": "Origin, Access-Control-Request-Headers",
    }
    granted = [h.strip() for h in requested.split(",") if h.strip() and _header_allowed(h)]
    if granted:
        headers["Access-Control-Allow-Headers"] = ", ".join(granted)
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for every response, streamed ones included, before
    its headers are sent."""
    if "Access-Control-Allow-Origin" in response.headers:
        return
    allow = allowed_origin(request)
    if allow is None:
        return
    response.headers["Access-Control-Allow-Origin"] = allow
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if allow != "*":
        response.headers.add("Vary", "Origin")
