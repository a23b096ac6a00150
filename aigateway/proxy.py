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
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .appkeys import CLIENT_GONE, MODEL, REQUEST_ID, SETTINGS, UPSTREAM
from .bodypeek import peek_model
from .errors import PayloadTooLarge, UpstreamTimeout, UpstreamUnreachable
from .routes import RelayRoute
from .settings import Settings

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
    settings = request.app[SETTINGS]
    data: bytes | io.BytesIO | aiohttp.StreamReader
    if route.stream_request_body:
        data = request.content
    else:
        body = await _read_body(request, settings.max_body_bytes)
        model = peek_model(body)
        if model is not None:
            request[MODEL] = model
        # aiohttp writes a BytesIO in slices, yielding to the loop between them.
        data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
    url = _upstream_url(request, settings)
    headers = _request_headers(request, settings)
    try:
        async with request.app[UPSTREAM].request(
            request.method, url, data=data, headers=headers, allow_redirects=False
        ) as upstream:
            response = _response_for(upstream, request)
            try:
                await response.prepare(request)
                await _pump(upstream, response, request)
            except ConnectionResetError:
                # The client left: close (not pool) the upstream connection so Ollama stops.
                request[CLIENT_GONE] = True
                upstream.close()
            return response
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(
            f"cannot reach Ollama at {settings.ollama_base_url}: {exc.os_error.strerror or exc}"
        ) from None
    except (aiohttp.ServerTimeoutError, TimeoutError):
        raise UpstreamTimeout(
            f"Ollama at {settings.ollama_base_url} did not answer in time"
            f" (connect {settings.upstream_connect_timeout:g} s,"
            f" read {settings.upstream_read_timeout:g} s)"
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"Ollama at {settings.ollama_base_url} failed before answering: {type(exc).__name__}"
        ) from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = PayloadTooLarge(
        f"request body is larger than this gateway accepts ({limit} bytes, MAX_BODY_SIZE)"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


def _upstream_url(request: web.Request, settings: Settings) -> URL:
    # raw_path keeps the client's encoding and query string exactly.
    raw = request.raw_path
    if not raw.startswith(settings.base_path):
        raw = request.rel_url.raw_path_qs
    return URL(settings.upstream_api_base + raw[len(settings.base_path) :], encoded=True)


def _request_headers(request: web.Request, settings: Settings) -> CIMultiDict[str]:
    drop = REQUEST_DROP
    connection = request.headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() not in drop:
            headers.add(name, value)
    # Ask for identity so the bytes we relay are the bytes Ollama produced.
    headers["Accept-Encoding"] = "identity"
    if settings.upstream_api_key:
        headers["Authorization"] = f"Bearer {settings.upstream_api_key}"
    return headers


def _response_for(upstream: aiohttp.ClientResponse, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    drop = RESPONSE_DROP
    connection = upstream.headers.get("Connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name, value in upstream.headers.items():
        if name.lower() not in drop:
            response.headers.add(name, value)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    return response


async def _pump(
    upstream: aiohttp.ClientResponse, response: web.StreamResponse, request: web.Request
) -> None:
    """Copy upstream chunks to the client; a ConnectionResetError means the client left."""
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except asyncio.CancelledError:
        request[CLIENT_GONE] = True
        upstream.close()
        raise
    except ConnectionResetError:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        log.warning(
            "rid=%s upstream stream broke after %d bytes: %s",
            request[REQUEST_ID],
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
