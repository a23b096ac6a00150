"""The relay: one request in, the same request to Ollama, every response byte back.

Bodies and responses pass unchanged. Only headers are touched: hop-by-hop headers are
dropped both ways, and the client's `Host`, `Origin`, credentials and cookies never
reach Ollama (Ollama refuses foreign Hosts and unknown browser Origins with 403; the
aiohttp client sends the Host of OLLAMA_BASE_URL instead). Each chunk is written to the
client as it arrives. When the client goes away, leaving the `async with` closes the
upstream connection, which is how Ollama learns to stop generating.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .appkeys import CONTEXT, LIMITER, SETTINGS, UPSTREAM, USAGE
from .bodypeek import peek_model
from .context import RequestContext
from .errors import (
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .modelaccess import check_request, filter_model_list, model_allowed
from .routes import RelayRoute
from .settings import Settings
from .store import KeyRecord, UsageRecord
from .usage import UsageTap

log = logging.getLogger("aigateway.proxy")

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
# Origin), what aiohttp recomputes (Content-Length, Expect), and cookies meant for us.
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "authorization",
    "x-api-key",
    "origin",
    "cookie",
    "content-length",
    "expect",
    "accept-encoding",
}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
NDJSON = "application/x-ndjson"
LARGE_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        # No pool limit: Ollama queues requests itself; a gateway cap would add a second queue.
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Send the client's own Content-Type and User-Agent, or none, never aiohttp's.
        skip_auto_headers=("Content-Type", "User-Agent"),
    )


def relay_handler(route: RelayRoute) -> Handler:
    async def relay(request: web.Request) -> web.StreamResponse:
        return await _relay(request, route)

    relay.__name__ = f"relay_{route.path.strip('/').split('/')[0]}"
    return relay


async def _relay(request: web.Request, route: RelayRoute) -> web.StreamResponse:
    app = request.app
    settings, context = app[SETTINGS], request[CONTEXT]
    principal = context.principal
    assert principal is not None  # the middleware authenticated every relayed request
    for value in request.match_info.values():
        # A decoded %2F or a dot segment would make the path Ollama sees another route.
        if "/" in value or "\\" in value or value in (".", ".."):
            raise NotFound(f"no such route: {request.path}")
    if route.model_in_path and principal.models is not None:
        named = request.match_info["model"]
        if not model_allowed(named, principal.models):
            raise NotFound(f"model '{named}' not found")
    if route.kind == "manage" and principal.role != "admin":
        raise Forbidden(f"{route.path.split('/')[1]} manages models and needs an admin key")
    data: bytes | io.BytesIO | aiohttp.StreamReader
    if route.stream_request_body:
        data, bytes_in = request.content, request.content_length or 0
        model = None
        if principal.models is not None:
            raise Forbidden("this key may only use some models, and uploads name none")
    else:
        body = await _read_body(request, settings.max_body_bytes)
        bytes_in = len(body)
        if principal.models is not None and route.model_fields:
            model = await check_request(body, route.model_fields, principal.models)
        else:
            model = peek_model(body, route.model_fields)
        # aiohttp writes a BytesIO in slices, yielding to the loop between them.
        data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
    context.model = model
    limiter = app[LIMITER]
    verdict = limiter.admit(principal, time.time())
    if not verdict.allowed:
        raise TooManyRequests(
            verdict.reason, {"Retry-After": str(verdict.retry_after), **dict(verdict.headers)}
        )
    exchange = _Exchange(context, principal, verdict.headers)
    try:
        return await _forward(request, route, data, exchange)
    finally:
        limiter.release(principal.id)
        _record_usage(request, route, bytes_in, exchange)


class _Exchange:
    """What one relayed request learned on its way, for its usage record."""

    __slots__ = (
        "context",
        "first_byte_at",
        "principal",
        "rate_headers",
        "response",
        "status",
        "tap",
    )

    def __init__(
        self,
        context: RequestContext,
        principal: KeyRecord,
        rate_headers: tuple[tuple[str, str], ...],
    ) -> None:
        self.context = context
        self.principal = principal
        self.rate_headers = rate_headers
        self.tap = UsageTap()
        self.status = 502
        self.first_byte_at: float | None = None
        self.response: web.StreamResponse | None = None


async def _forward(
    request: web.Request,
    route: RelayRoute,
    data: bytes | io.BytesIO | aiohttp.StreamReader,
    exchange: _Exchange,
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    url = _upstream_url(request, settings, route)
    headers = _request_headers(request, settings)
    patterns = exchange.principal.models
    try:
        async with request.app[UPSTREAM].request(
            request.method, url, data=data, headers=headers, allow_redirects=False
        ) as upstream:
            exchange.status = upstream.status
            response = exchange.response = _response_for(upstream, request, exchange)
            try:
                if route.lists_models and patterns is not None and request.method == "GET":
                    await _send_filtered(upstream, response, request, exchange, patterns)
                else:
                    await response.prepare(request)
                    await _pump(upstream, response, request, exchange)
            except ConnectionResetError:
                # The client left: close (not pool) the upstream connection so Ollama stops.
                exchange.context.client_gone = True
                upstream.close()
            return response
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(
            f"cannot reach Ollama at {settings.ollama_base_url}: {exc.os_error.strerror or exc}"
        ) from None
    except (aiohttp.ServerTimeoutError, TimeoutError):
        exchange.status = 504
        raise UpstreamTimeout(
            f"Ollama at {settings.ollama_base_url} did not answer in time"
            f" (connect {settings.upstream_connect_timeout:g} s,"
            f" read {settings.upstream_read_timeout:g} s)"
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"Ollama at {settings.ollama_base_url} failed before answering: {type(exc).__name__}"
        ) from None


def _record_usage(
    request: web.Request, route: RelayRoute, bytes_in: int, exchange: _Exchange
) -> None:
    """Queue the usage record (never awaits: this also runs when the handler is cancelled)
    and charge the key's token quota."""
    now_perf, now = time.perf_counter(), time.time()
    context, principal, tap = exchange.context, exchange.principal, exchange.tap
    prompt, completion = tap.counts()
    if prompt or completion:
        request.app[LIMITER].charge_tokens(principal.id, (prompt or 0) + (completion or 0), now)
    context.bytes_out = tap.total
    started, first_byte_at = context.started, exchange.first_byte_at
    # Positional, in UsageRecord's field order: keywords cost twice as much on every request.
    request.app[USAGE].record(
        UsageRecord(
            now,
            principal.id,
            principal.user,
            principal.name,
            request.method,
            route.path,
            context.model,
            exchange.status,
            prompt,
            completion,
            (now_perf - started) * 1000,  # duration_ms
            None if first_byte_at is None else (first_byte_at - started) * 1000,  # ttfb_ms
            bytes_in,
            tap.total,  # bytes_out
            context.client_gone,
        )
    )


async def _send_filtered(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    request: web.Request,
    exchange: _Exchange,
    patterns: tuple[str, ...],
) -> None:
    """A model list (tags, ps) cut down to what an allow-listed key may see."""
    body = await upstream.read()
    exchange.first_byte_at = time.perf_counter()
    if upstream.status == 200:
        body = filter_model_list(body, patterns)
    exchange.tap.feed(body)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than this gateway accepts ({limit} bytes, MAX_BODY_SIZE)"
    )


# URL objects for the paths clients send, which are few (/api/chat, /v1/models, ...):
# building one costs more than the rest of the header work. Bounded, as query strings vary.
_URL_CACHE: dict[tuple[bool, str, str, str], URL] = {}
_URL_CACHE_SIZE = 1024


def _upstream_url(request: web.Request, settings: Settings, route: RelayRoute) -> URL:
    # raw_path keeps the client's encoding and query string exactly.
    raw = request.raw_path
    cache_key = (route.native, settings.base_path, settings.ollama_base_url, raw)
    url = _URL_CACHE.get(cache_key)
    if url is None:
        prefix = settings.client_prefix(route.native)
        tail = raw[len(prefix) :] if raw.startswith(prefix) else request.rel_url.raw_path_qs
        url = URL(settings.upstream_prefix(route.native) + tail, encoded=True)
        if len(_URL_CACHE) >= _URL_CACHE_SIZE:
            _URL_CACHE.clear()
        _URL_CACHE[cache_key] = url
    return url


def _without(headers: CIMultiDict[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """`headers` less `drop` and whatever their Connection header names (hop-by-hop)."""
    connection = headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name in drop:
        if name in headers:
            del headers[name]
    return headers


def _request_headers(request: web.Request, settings: Settings) -> CIMultiDict[str]:
    headers = _without(CIMultiDict(request.headers), REQUEST_DROP)
    # Ask for identity so the bytes we relay are the bytes Ollama produced.
    headers["Accept-Encoding"] = "identity"
    if settings.upstream_api_key:
        headers["Authorization"] = f"Bearer {settings.upstream_api_key}"
    return headers


def _response_for(
    upstream: aiohttp.ClientResponse, request: web.Request, exchange: _Exchange
) -> web.StreamResponse:
    headers = _without(CIMultiDict(upstream.headers), RESPONSE_DROP)
    headers["X-Request-Id"] = exchange.context.request_id
    if exchange.rate_headers:
        headers.update(exchange.rate_headers)  # ours, replacing any from upstream
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    return response


async def _pump(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    request: web.Request,
    exchange: _Exchange,
) -> None:
    """Copy upstream chunks to the client, letting the usage tap see each one in passing;
    a ConnectionResetError means the client left."""
    tap = exchange.tap
    try:
        async for chunk in upstream.content.iter_any():
            if exchange.first_byte_at is None:
                exchange.first_byte_at = time.perf_counter()
            tap.feed(chunk)
            await response.write(chunk)
    except asyncio.CancelledError:
        exchange.context.client_gone = True
        upstream.close()
        raise
    except ConnectionResetError:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        log.warning(
            "rid=%s upstream stream broke after %d bytes: %s",
            exchange.context.request_id,
            response.body_length,
            reason,
        )
        upstream.close()
        if response.content_type == NDJSON:
            # Ollama reports mid-stream failures as a final {"error": ...} line; do the same
            # so clients raise instead of taking a cut stream for a complete one.
            line = orjson.dumps({"error": f"aigateway: the Ollama stream broke ({reason})"})
            await response.write(line + b"\n")
    await response.write_eof()
