"""Answers for several upstreams at once: a model list for all of them, and a pull on
every Ollama."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from ..access.aliases import with_aliases
from ..access.allowlist import filter_model_list
from ..errors import ServiceUnavailable, UpstreamUnreachable
from ..protocol.routes import RelayRoute
from ..protocol.streams import NDJSON
from ..upstreams.http import own_headers_missing, request_headers, response_headers, upstream_url
from ..upstreams.pool import Upstream
from ..upstreams.transport import Response, UpstreamFailed
from ..upstreams.union import union_of_lists
from .exchange import Exchange
from .state import RelayState


async def pull_everywhere(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: RelayState
) -> web.StreamResponse:
    """POST /api/pull without X-Upstream, with several upstreams: the model is pulled on
    every Ollama that is up, one after another. Streamed, their progress lines reach the
    client as they come, each one's {"status":"success"} but the last left out, so that
    the client reads one pull ending in success, or in the first error (an error line).
    Not streamed, the answer is the first error, else the last success."""
    targets = [u for u in relay.pool.upstreams if u.up and u.config.kind == "ollama"]
    if not targets:
        raise ServiceUnavailable("no Ollama upstream is up to pull on", {"Retry-After": "5"})
    body = exchange.data
    assert isinstance(body, bytes)  # pull bodies are small: read whole
    exchange.data = None
    try:
        streamed = orjson.loads(body).get("stream", True) is not False
    except (orjson.JSONDecodeError, AttributeError):
        streamed = True  # Ollama will answer the body's fault itself
    transport = relay.transport
    response: web.StreamResponse | None = None
    for number, upstream in enumerate(targets):
        last = number == len(targets) - 1
        exchange.upstream_name = upstream.name
        url = upstream_url(request, relay.settings, route, upstream.config)
        try:
            async with transport.send(
                "POST",
                url,
                data=body,
                headers=request_headers(request, upstream.config),
                skip_auto_headers=own_headers_missing(request),
            ) as answer:
                if not streamed or answer.status != 200:
                    data = await answer.read()
                    if answer.status == 200 and not last:
                        continue
                    if response is not None:  # an error after others' progress went out
                        await _write_pulled(response, exchange, _error_line(upstream, data))
                        break
                    exchange.status = answer.status
                    exchange.tap.feed(data)
                    return _whole_response(answer, data, exchange)
                if response is None:
                    response = exchange.response = web.StreamResponse(
                        headers=response_headers(
                            {"Content-Type": NDJSON},
                            exchange.context.request_id,
                            exchange.rate_headers,
                        )
                    )
                    exchange.status = 200
                    await response.prepare(request)
                async for line in answer.content:
                    if not last and line.strip() == b'{"status":"success"}':
                        continue
                    await _write_pulled(response, exchange, line)
        except UpstreamFailed as exc:
            relay.pool.failed(upstream, f"a pull failed: {exc.cause}")
            message = f"pulling on upstream {upstream.name} failed: {exc.cause}"
            if response is None:
                raise UpstreamUnreachable(message) from None
            await _write_pulled(response, exchange, orjson.dumps({"error": message}) + b"\n")
            break
        except ConnectionResetError:
            exchange.context.client_gone = True  # the client left: pull no further
            return response or web.Response()
    assert response is not None
    # Not write_eof() here: aiohttp ends the response once the handler returns, after the
    # relay has journaled its usage record (no client holds a whole answer whose record
    # a killed process could lose).
    return response


async def _write_pulled(response: web.StreamResponse, exchange: Exchange, line: bytes) -> None:
    exchange.tap.feed(line)
    if exchange.first_byte_at is None:
        exchange.first_byte_at = time.perf_counter()
    await response.write(line)


def _error_line(upstream: Upstream, answer: bytes) -> bytes:
    """An upstream's error answer as a stream's last line, naming the upstream."""
    try:
        error = orjson.loads(answer).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    text = error if isinstance(error, str) else answer[:200].decode("utf-8", "replace")
    return orjson.dumps({"error": f"{upstream.name}: {text}"}) + b"\n"


def _whole_response(answer: Response, data: bytes, exchange: Exchange) -> web.Response:
    headers = response_headers(answer.headers, exchange.context.request_id, exchange.rate_headers)
    exchange.first_byte_at = time.perf_counter()
    response = web.Response(status=answer.status, body=data, headers=headers)
    exchange.response = response
    return response


async def send_union(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: RelayState
) -> web.StreamResponse:
    """A model list answered for every upstream together, cut down to what the key may
    use."""
    body = await union_of_lists(relay.pool, route)
    exchange.upstream_name = "all"
    exchange.first_byte_at = time.perf_counter()
    exchange.status = 200
    principal = exchange.principal
    body = filter_model_list(body, principal.models, relay.settings.allow_cloud_models)
    if route.lists_aliases:
        body = with_aliases(body, relay.key_table.aliases.for_caller(principal))
    exchange.tap.feed(body)  # (settled as the handler returns, before the body is sent)
    response = exchange.response = web.Response(
        body=body,
        content_type="application/json",
        headers={"X-Request-Id": exchange.context.request_id, **dict(exchange.rate_headers)},
    )
    return response
