"""Choose an upstream and send the request to it, failing over to the next one
while nothing has reached the client; the upstream's slot is a take in the ledger."""

from __future__ import annotations

import io
import logging

from aiohttp import web

from ..errors import UpstreamTimeout, UpstreamUnreachable
from ..protocol.routes import RelayRoute
from ..upstreams.cache import Keeper
from ..upstreams.config import UpstreamConfig
from ..upstreams.http import own_headers_missing, request_headers, upstream_url
from ..upstreams.pool import FAILOVER_STATUSES, UPSTREAM_HEADER, Pool, Upstream
from ..upstreams.transport import ConnectFailed, TimedOut, UpstreamFailed
from .cached import kept_answer, replayed
from .exchange import Exchange
from .fanout import pull_everywhere, send_union
from .ledger import Ledger, UpstreamSlot
from .pump import pump, response_for, send_filtered
from .state import RelayState

log = logging.getLogger("aigateway.proxy")


async def forward(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: RelayState, ledger: Ledger
) -> tuple[web.StreamResponse, bytes | None]:
    """Send the request to the best upstream for it, and on to the next when one refuses
    the connection, fails or answers 502/503/504 before anything reached the client (a
    body read into memory can be sent again; an upload streamed through cannot). The
    response, and the bytes that complete it once the request is settled (None: it is
    complete, or was cut). A request the response cache holds the answer to is answered
    from it, and reaches no upstream."""
    key = exchange.cache_key
    if key is not None:
        cache = relay.cache
        assert cache is not None  # (a key is made only with the cache on)
        answer = await kept_answer(cache.answers, key)
        if answer is not None:
            return await replayed(answer, request, route, exchange)
        exchange.keeper = ledger.take(Keeper(cache.answers, key))  # (kept once whole)
    pool = relay.pool
    if pool.single:
        only = pool.upstreams[0]
        if only.config.max_concurrent is None and not pool.closed:  # the usual gateway:
            only.in_flight += 1  # nothing to choose, nor to wait for, nor to fail over to
            only.picked += 1
            ledger.take(UpstreamSlot(pool, only))
            return await _forward_to(only, request, route, exchange, relay, False)
    else:
        if route.lists_models and request.method in ("GET", "HEAD"):
            return await send_union(request, route, exchange, relay), None  # (HEAD: no body)
        if route.native and route.path == "/pull" and UPSTREAM_HEADER not in request.headers:
            return await pull_everywhere(request, route, exchange, relay), None
    # A cloud API paid with the gateway's key serves only keys whose allow-list names the
    # model (it passed the allow-list already); listing its models costs nothing.
    closed_ok = route.kind != "inference" or exchange.principal.models is not None
    candidates = pool.candidates(
        route, _model_of(request, route, exchange), _named(request, route), closed_ok
    )
    replayable = isinstance(exchange.data, bytes | io.BytesIO)
    while True:
        upstream = pool.try_acquire(candidates) or await _wait_queued(exchange, pool, candidates)
        slot = ledger.take(UpstreamSlot(pool, upstream))
        if isinstance(exchange.data, io.BytesIO):
            exchange.data.seek(0)
        upstream.picked += 1
        try:
            more = replayable and len(candidates) > 1
            return await _forward_to(upstream, request, route, exchange, relay, more)
        except _TryNext as exc:
            pool.failed(upstream, exc.reason)
            slot.give_back_now()  # (the next upstream's queue may be waiting for it)
        except (UpstreamUnreachable, UpstreamTimeout) as exc:
            if exchange.response is None:
                pool.failed(upstream, exc.message)
            raise
        candidates = [c for c in candidates if c is not upstream]  # (after a _TryNext)


async def _wait_queued(exchange: Exchange, pool: Pool, candidates: list[Upstream]) -> Upstream:
    """A slot when every candidate is busy, waiting in the queue (which Now shows, and
    the request's trace times)."""
    in_flight, trace = exchange.in_flight, exchange.trace
    in_flight.queued = True
    if trace is not None:
        trace.queued()
    try:
        principal = exchange.principal
        upstream = await pool.wait_for_slot(candidates, principal.id, principal.queue_class)
    finally:
        in_flight.queued = False
    if trace is not None:
        trace.dequeued()
    return upstream


class _TryNext(Exception):
    """This upstream failed before anything reached the client: try the next one."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _forward_to(
    target: Upstream,
    request: web.Request,
    route: RelayRoute,
    exchange: Exchange,
    relay: RelayState,
    more: bool,
) -> tuple[web.StreamResponse, bytes | None]:
    """One try at one upstream; with `more` (another may be tried after it) a failure
    before anything reached the client raises _TryNext, and the body is kept."""
    settings = relay.settings
    config = target.config
    transport = relay.transport
    url = upstream_url(request, settings, route, config)
    headers = request_headers(request, config)
    if exchange.trace is not None:
        exchange.trace.upstream(config.name, config.kind, headers, config.client_headers)
    patterns = exchange.principal.models
    data = exchange.data
    exchange.upstream_name = config.name
    if not relay.pool.single:  # (one upstream: the access line stays as it was)
        exchange.context.upstream = config.name
    try:
        async with transport.send(
            request.method,
            url,
            data=data,
            headers=headers,
            skip_auto_headers=own_headers_missing(request),
        ) as upstream:
            if upstream.status in FAILOVER_STATUSES:
                if more:
                    raise _TryNext(f"answered {upstream.status}")
                relay.pool.failed(target, f"answered {upstream.status}")  # and it is relayed
            # Ollama has the whole body now: let go of it and of its share of the budget.
            del data
            exchange.data = None
            if exchange.body_hold is not None:
                exchange.body_hold.give_back_now()
            exchange.in_flight.upstream = upstream  # (a graceful stop cuts it there)
            exchange.status = upstream.status
            response = exchange.response = response_for(upstream, request, exchange)
            try:
                if route.lists_models and request.method == "GET":
                    aliases = (
                        relay.key_table.aliases.for_caller(exchange.principal)
                        if route.lists_aliases
                        else []
                    )
                    if patterns is not None or not settings.allow_cloud_models or aliases:
                        return response, await send_filtered(upstream, exchange, relay, aliases)
                await response.prepare(request)
                return response, await pump(upstream, response, request, exchange, route)
            except ConnectionResetError:
                # The client left: close (not pool) the upstream connection so Ollama stops.
                exchange.context.client_gone = True
                upstream.close()
            return response, None
    except ConnectFailed as exc:
        why = f": {exc}"
        if more:
            raise _TryNext(f"cannot reach it{why}") from None
        said = f": {exc.public}"  # (the system's words may name the address)
        raise _unreachable(exchange, config, "cannot reach ", why, said) from None
    except TimedOut:
        why = (
            " did not answer in time"
            f" (connect {settings.upstream_connect_timeout:g} s,"
            f" read {settings.upstream_read_timeout:g} s)"
        )
        if more and exchange.response is None:
            raise _TryNext(f"it{why}") from None
        exchange.status = 504
        raise _unreachable(exchange, config, "", why, kind=UpstreamTimeout) from None
    except UpstreamFailed as exc:  # broken after connecting
        upload = exchange.upload
        if upload is not None and upload.slow_body is not None:  # the upload failed
            exchange.status = 408
            raise upload.slow_body from None
        why = f" failed before answering: {exc.cause}"
        if more and exchange.response is None:
            raise _TryNext(f"it{why}") from None
        raise _unreachable(exchange, config, "", why) from None


def _unreachable(
    exchange: Exchange,
    config: UpstreamConfig,
    before: str,
    after: str,
    said: str | None = None,
    kind: type[UpstreamUnreachable | UpstreamTimeout] = UpstreamUnreachable,
) -> UpstreamUnreachable | UpstreamTimeout:
    """The error for an upstream that failed (`before` + the upstream + `after`): an
    admin's names its URL, as the log does; any other key's names it only as Ollama (or a
    cloud upstream by its name), with `said` for `after` where that would locate it, so
    that no key holder learns where the GPUs are."""
    named = "Ollama" if config.kind == "ollama" else f"upstream {config.name}"
    located = f"Ollama at {config.url}" if config.kind == "ollama" else named
    log.warning("rid=%s %s%s%s", exchange.context.request_id, before, located, after)
    if exchange.principal.role == "admin":
        return kind(f"{before}{located}{after}")
    return kind(f"{before}{named}{after if said is None else said}")


def _model_of(request: web.Request, route: RelayRoute, exchange: Exchange) -> str | None:
    """The model that picks the upstream: the body's, or the path's (/v1/models/{model})."""
    if route.model_in_path:
        return request.match_info["model"]
    return exchange.context.model


def _named(request: web.Request, route: RelayRoute) -> str | None:
    """The upstream an admin names for model management (required with several)."""
    if route.kind == "manage":
        return request.headers.get(UPSTREAM_HEADER, "")  # "": refused, naming the choices
    return None
