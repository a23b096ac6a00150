"""What crosses between the gateway and an upstream besides the body: the URL a request
goes to, and the headers both ways (the request itself goes out through transport.py).

Only headers are touched: hop-by-hop headers are dropped both ways, and the client's
`Host`, `Origin`, credentials and cookies never reach an upstream (Ollama refuses foreign
Hosts and unknown browser Origins with 403; the aiohttp client sends the upstream's Host
instead). An upstream gets its own key (UPSTREAM_API_KEY, or key_env), never a client's.
A cloud API, paid with that key, gets only the client headers its config allows
(CLOUD_HEADERS and its pass_headers), and always the gateway's anthropic-version unless
pass_headers lets the client's through.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from yarl import URL

from ..access.limits import RATE_LIMIT_HEADERS
from ..protocol.routes import RelayRoute
from ..settings import Settings
from .config import UpstreamConfig, auth_headers
from .pool import UPSTREAM_HEADER

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Besides hop-by-hop: the gateway's own credentials, what Ollama would refuse (Host,
# Origin), what aiohttp recomputes (Content-Length, Expect), cookies meant for us, and
# Content-Encoding: aiohttp decoded the body, so it goes on as it now is.
REQUEST_DROP = HOP_BY_HOP | {
    "content-encoding",
    "host",
    "authorization",
    "x-api-key",
    "origin",
    "cookie",
    "content-length",
    "expect",
    "accept-encoding",
    UPSTREAM_HEADER.lower(),
}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Besides those, what the gateway answers with its own (response_headers): the request's
# id always, and the X-RateLimit-* for a key with limits.
_REPLACED = RESPONSE_DROP | {"x-request-id"}
_REPLACED_AND_RATED = _REPLACED | {name.lower() for name in RATE_LIMIT_HEADERS}


# URL objects for the paths clients send, which are few (/api/chat, /v1/models, ...):
# building one costs more than the rest of the header work. Bounded, as query strings vary.
_URL_CACHE: dict[tuple[bool, str, str, str], URL] = {}
_URL_CACHE_SIZE = 1024


def upstream_url(
    request: web.Request, settings: Settings, route: RelayRoute, upstream: UpstreamConfig
) -> URL:
    # raw_path keeps the client's encoding and query string exactly.
    raw = request.raw_path
    cache_key = (route.native, settings.base_path, upstream.url, raw)
    url = _URL_CACHE.get(cache_key)
    if url is None:
        prefix = settings.client_prefix(route.native)
        tail = raw[len(prefix) :] if raw.startswith(prefix) else request.rel_url.raw_path_qs
        # (a cloud API's URL ends in its version, /v1, already)
        base = upstream.url + (route.ollama_prefix if upstream.kind == "ollama" else "")
        url = URL(base + tail, encoded=True)
        if len(_URL_CACHE) >= _URL_CACHE_SIZE:
            _URL_CACHE.clear()
        _URL_CACHE[cache_key] = url
    return url


def without(
    headers: Mapping[str, str], drop: frozenset[str], keep: frozenset[str] | None = None
) -> list[tuple[str, str]]:
    """The (name, value) pairs of `headers` less `drop` and whatever their Connection
    header names (hop-by-hop), and, given `keep` (lower-case names), only those. (Pairs,
    not a copy to delete from: the headers present are fewer than the names dropped, and
    aiohttp makes its own multidict of them anyway.)"""
    connection = headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    if keep is None:
        return [(name, value) for name, value in headers.items() if name.lower() not in drop]
    return [
        (name, value)
        for name, value in headers.items()
        if (lower := name.lower()) in keep and lower not in drop
    ]


def request_headers(request: web.Request, upstream: UpstreamConfig) -> list[tuple[str, str]]:
    # An Ollama's client_headers is None: every header but the dropped ones, at no extra cost.
    headers = without(request.headers, REQUEST_DROP, upstream.client_headers)
    # Ask for identity so the bytes we relay are the bytes Ollama produced.
    headers.append(("Accept-Encoding", "identity"))
    if upstream.key is not None:
        # The upstream's own key (the client's went with REQUEST_DROP), and Anthropic's
        # anthropic-version: the client's stands only if pass_headers let it through.
        passed = upstream.pass_headers
        for name, value in auth_headers(upstream).items():
            if name in passed and any(sent.lower() == name for sent, _ in headers):
                continue
            headers.append((name, value))
    return headers


# The headers aiohttp makes up for a request without them.
_OWN_HEADERS = ("Content-Type", "User-Agent")


def own_headers_missing(request: web.Request) -> tuple[str, ...] | None:
    """The headers aiohttp would make up for a request that lacks them, to be skipped
    (`skip_auto_headers`): the client's own Content-Type and User-Agent go on, or none,
    never aiohttp's. None when the client sent both, the usual case: a skip list, even
    the session's own, makes aiohttp rebuild it on every request."""
    headers = request.headers
    if "Content-Type" in headers and "User-Agent" in headers:
        return None
    return tuple(name for name in _OWN_HEADERS if name not in headers)


def response_headers(
    upstream: Mapping[str, str], request_id: str, rate_headers: tuple[tuple[str, str], ...]
) -> list[tuple[str, str]]:
    """What a client gets with an upstream's answer: its headers less hop-by-hop ones and
    Content-Length (aiohttp sets the length it sends), with the request's id and the
    key's X-RateLimit-* (ours, replacing any the upstream sent). (Pairs: the response
    makes its own multidict of them, and would copy one made here.)"""
    headers = without(upstream, _REPLACED_AND_RATED if rate_headers else _REPLACED)
    headers.append(("X-Request-Id", request_id))
    headers.extend(rate_headers)
    return headers
