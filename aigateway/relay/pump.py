"""The answer, back to the client: every chunk as it arrives, the usage tap seeing
each in passing; the bytes that complete it kept back until the request is settled
(finish); a stream its upstream cut short ended the way its dialect signals it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from aiohttp import web

from ..access.aliases import with_aliases
from ..access.allowlist import filter_model_list
from ..http.appkeys import CONTEXT
from ..protocol.routes import RelayRoute
from ..protocol.streams import NDJSON, STREAM_TYPES, broken_stream_tail
from ..records import Alias
from ..upstreams.cache import CACHE_HEADER
from ..upstreams.http import response_headers
from ..upstreams.transport import READ_FAILURES, Response
from .exchange import Exchange
from .inflight import GatewayStopping
from .ledger import TicketHold
from .state import RelayState

log = logging.getLogger("aigateway.proxy")

# What ends a stream short: the upstream failing midway, or a graceful stop.
_CUT_SHORT: tuple[type[BaseException], ...] = (*READ_FAILURES, GatewayStopping)


class _Chunks(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class Answer(Protocol):
    """What the pump reads of an answer: an upstream's response, or one the response
    cache kept (cached.py)."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content(self) -> _Chunks: ...
    def close(self) -> None: ...


async def send_filtered(
    upstream: Response, exchange: Exchange, relay: RelayState, aliases: list[Alias]
) -> bytes:
    """A model list (tags, ps, /v1/models) cut down to what the key may use, with the
    key's `aliases` of the models it lists: the body, sent once the request is settled."""
    body = await upstream.read()
    exchange.first_byte_at = time.perf_counter()
    if upstream.status == 200:
        body = filter_model_list(body, exchange.principal.models, relay.settings.allow_cloud_models)
        body = with_aliases(body, aliases)
    exchange.tap.feed(body)
    response = exchange.response
    assert response is not None
    response.content_length = len(body)
    return body


def response_for(upstream: Answer, request: web.Request, exchange: Exchange) -> web.StreamResponse:
    headers = response_headers(upstream.headers, exchange.context.request_id, exchange.rate_headers)
    if exchange.keeper is not None:  # looked for in the response cache, not found there
        headers.append((CACHE_HEADER, "miss"))
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    length = upstream.content_length  # (parsed from the header at each reading)
    if length is not None:
        response.content_length = length
    return response


async def pump(
    upstream: Answer,
    response: web.StreamResponse,
    request: web.Request,
    exchange: Exchange,
    route: RelayRoute,
) -> bytes | None:
    """Copy upstream chunks to the client, letting the usage tap see each one in passing;
    a ConnectionResetError means the client left. The bytes that complete the response
    (a body's last chunk when it has a length; else only its chunked ending) are kept
    back and returned, to go out once the request is settled, so that no client holds a
    whole answer whose record a killed process could lose. None: the stream was cut, and
    ended here the way its dialect signals it. A response cache miss (its `keeper`) keeps
    the chunks as they pass, for the cache to have once the answer came whole."""
    tap, stripper, keeper = exchange.tap, exchange.stripper, exchange.keeper
    length = upstream.content_length
    # Lines are what a stream cut before its final counts is charged by: counted in
    # streams, which come without a length from Ollama, or (through something that
    # buffers them) with one.
    tap.lines = length is None or upstream.content_type in STREAM_TYPES
    end = b""
    try:
        async for chunk in upstream.content.iter_any():
            if exchange.first_byte_at is None:
                exchange.first_byte_at = time.perf_counter()
            tap.feed(chunk)
            if keeper is not None:
                keeper.add(chunk)
            if stripper is not None:
                chunk = stripper.feed(chunk)
                if not chunk:
                    continue
            if tap.total == length:  # the last bytes of a body with a length
                end = chunk
                continue
            await response.write(chunk)
        if keeper is not None:
            keeper.complete(upstream.status, upstream.reason, upstream.headers, length)
        if stripper is not None and (rest := stripper.flush()):
            if length is None:
                await response.write(rest)
            else:
                end += rest
    except asyncio.CancelledError:
        exchange.context.client_gone = True
        upstream.close()
        raise
    except ConnectionResetError:
        raise
    except _CUT_SHORT as exc:
        await _end_cut_stream(upstream, response, request, exchange, route, exc)
        return None
    return end


async def _end_cut_stream(
    upstream: Answer,
    response: web.StreamResponse,
    request: web.Request,
    exchange: Exchange,
    route: RelayRoute,
    exc: BaseException,
) -> None:
    """End a response whose upstream stopped short so that the client can tell: the
    dialect's error in the stream, then for NDJSON a clean end (as Ollama ends its own
    mid-stream errors) and for anything else a closed connection, so that a body framed
    by Content-Length, or an SSE stream read by a client that ignores error events, is
    seen as incomplete at once instead of waited on."""
    upstream.close()
    await end_cut(response, request, exchange, route, exc)


async def end_cut(
    response: web.StreamResponse,
    request: web.Request,
    exchange: Exchange,
    route: RelayRoute,
    exc: BaseException,
) -> None:
    """End a response that had begun and was cut (its upstream, if any, closed already):
    the dialect's error in a stream, then a clean end (NDJSON) or a closed connection."""
    if isinstance(exc, GatewayStopping):  # (or StoppedByAdmin)
        reason, message = exc.reason, exc.message
    else:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        message = f"aigateway: the Ollama stream broke ({reason})"
    exchange.cut_by = reason
    log.warning(
        "rid=%s upstream stream cut after %d bytes: %s",
        exchange.context.request_id,
        exchange.tap.total,
        reason,
    )
    content_type = response.content_type
    tail = None
    if response.content_length is None:  # chunked: there is room for one more message
        tail = broken_stream_tail(content_type, route.dialect, message)
    try:
        if tail is not None:
            await response.write(tail)
        if tail is not None and content_type == NDJSON:
            await response.write_eof()
            return
    except ConnectionResetError:
        exchange.context.client_gone = True
        return
    transport = request.transport
    if transport is not None:
        transport.close()  # after what is buffered, the tail included, has gone out


async def finish(
    request: web.Request, response: web.StreamResponse, end: bytes, held: TicketHold | None
) -> None:
    """Send the bytes that complete a settled response: its usage record is journaled by
    now (no client holds a whole answer whose record a killed process could lose), and for
    a key with a limit of requests at once on limits several gateways share, its slot is
    given back in the database first, so that a client that waits for each answer finds
    it free whichever gateway its next request reaches."""
    if held is not None and held.ticket.at_once:
        await held.shared.returned(held.ticket)
    try:
        if not response.prepared:
            await response.prepare(request)
        if end:
            await response.write(end)
        await response.write_eof()
    except ConnectionResetError:
        request[CONTEXT].client_gone = True
