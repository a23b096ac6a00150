"""The relay: one request in, the same request to an upstream, every response byte back.

Bodies and responses pass unchanged; only headers are touched (upstreamhttp.py). Each
chunk is written to the client as it arrives. When the client goes away, leaving the
`async with` closes the upstream connection, which is how Ollama learns to stop
generating. Answers for several upstreams at once (a model list, a pull) are fanout.py's.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from ..accesslog import CLIENT_CLOSED
from ..admitmodel import Named, named_models
from ..appkeys import CONTEXT
from ..bodypeek import FULL_PARSE_LIMIT
from ..budgets import Refusal, iso
from ..context import RequestContext
from ..errors import (
    BudgetExhausted,
    Forbidden,
    NotFound,
    Refused,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..expect import send_continue
from ..limits import ADMITTED, Limits, Verdict
from ..modelaccess import filter_model_list, is_cloud, model_allowed
from ..pricing import Price
from ..routes import RelayRoute
from ..settings import Settings
from ..sharedbudgets import TopUp
from ..sharedlimits import SharedLimits, Ticket
from ..store import KeyRecord, LocalUsageRecord, UsageRecord
from ..streams import (
    NDJSON,
    STREAM_TYPES,
    UsageStripper,
    broken_stream_tail,
    counted_tokens,
    with_usage_requested,
)
from ..upstreamhttp import own_headers_missing, request_headers, response_headers, upstream_url
from ..upstreams.config import UpstreamConfig
from ..upstreams.pool import FAILOVER_STATUSES, UPSTREAM_HEADER, Upstream
from ..usage import UsageTap
from .bodypace import BodyPace, SlowBody
from .bodyread import read_body
from .fanout import pull_everywhere, send_union
from .ledger import AdmissionHold, BodyHold, BudgetHold, Ledger, Outcome, TicketHold, TokenHold
from .state import Relay

log = logging.getLogger("aigateway.proxy")

# The request codings aiohttp's server decodes (identity: none to decode).
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd", "identity"})
LARGE_BODY_BYTES = 1024 * 1024
# Refusals whose Retry-After is longer carry x-should-retry: false (see _too_many).
SDK_RETRY_WAIT_MOST_S = 60
# A prompt's tokens are guessed at a quarter of its body's bytes, at most this many.
PROMPT_ESTIMATE_CAP = 128 * 1024

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]
T = TypeVar("T")


def relay_handler(route: RelayRoute, relay_state: Relay) -> Handler:
    async def relay(request: web.Request) -> web.StreamResponse:
        return await _relay(request, route, relay_state)

    relay.__name__ = f"relay_{route.path.strip('/').split('/')[0]}"
    return relay


async def _relay(request: web.Request, route: RelayRoute, relay: Relay) -> web.StreamResponse:
    """Admit, read the body, forward, settle: in that order, so that a key over its limits
    is refused before a byte of its body is read (and held)."""
    context = request[CONTEXT]
    principal = context.principal
    assert principal is not None  # the middleware authenticated every relayed request
    if route.checks_path:
        _check_path(request, route, principal, relay.settings)
    coding = request.headers.get("Content-Encoding")
    if coding is not None:
        _check_content_encoding(coding)
    if relay.storage_full:
        raise _storage_full()
    limiter = relay.limiter
    ticket = None
    decided_here = False  # on this gateway's counts while PostgreSQL is away
    if relay.shared is not None and limiter.limited(principal):
        verdict, ticket = await _admit_shared(request, route, principal, relay)
        decided_here = ticket is None
    else:
        verdict = limiter.admit(principal, time.time())
    if not verdict.allowed:
        raise _too_many(verdict)
    task = asyncio.current_task(relay.loop)
    exchange = Exchange(context, principal, verdict.headers, verdict is not ADMITTED, task)
    if decided_here:
        exchange.by_record = True
    ledger = exchange.ledger
    ledger.take(AdmissionHold(limiter, principal.id))
    if ticket is not None:
        assert relay.shared is not None
        exchange.ticket_hold = ledger.take(TicketHold(relay.shared, ticket))
    in_flight = relay.in_flight
    in_flight.requests.add(exchange)
    try:
        await _take_request(request, route, exchange, relay, coding)
        return await _forward(request, route, exchange, relay)
    except asyncio.CancelledError:
        if not exchange.stopping:
            context.client_gone = True  # (the server cancels a handler whose client left)
            raise
        # A graceful stop ended a request still reading its body or waiting for Ollama's
        # first byte: answer it, rather than drop the connection.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        exchange.status = 503
        raise ServiceUnavailable("the gateway is shutting down", {"Retry-After": "5"}) from None
    finally:
        in_flight.discard(exchange)
        if not exchange.relayed:
            ledger.unwind(Outcome(False, 0, 0, time.time()))
        elif not exchange.settled:
            _settle(request, route, exchange, relay)


async def _admit_shared(
    request: web.Request, route: RelayRoute, principal: KeyRecord, relay: Relay
) -> tuple[Verdict, Ticket | None]:
    """Admission by the limits several gateways share (PostgreSQL): one round trip,
    reserving the tokens the request is likely to use by what is known before its body
    is read (its length, and TOKEN_RESERVE for the output). On this gateway's own counts
    while the database is away, if LIMITS_WHEN_DATABASE_AWAY says so."""
    shared, limiter, settings = relay.shared, relay.limiter, relay.settings
    assert shared is not None
    reserve = 0
    if route.kind == "inference":
        reserve = _prompt_estimate(request.content_length or 0)
        if route.outputs_tokens:
            reserve += settings.token_reserve
    admission = await shared.admit(principal.id, limiter.limits_for(principal), reserve)
    if admission is None:  # the database is away: decide on this gateway's counts
        return limiter.admit(principal, time.time()), None
    if admission.away:
        raise ServiceUnavailable(admission.verdict.reason, {"Retry-After": "5"})
    if admission.ticket is not None:
        limiter.count(principal, time.time())
    return admission.verdict, admission.ticket


async def _top_up(
    shared: SharedLimits, ticket: Ticket, limits: Limits, estimate: int
) -> Ticket | Verdict:
    """The ticket with `estimate` reserved in all (a second round trip, only when the body
    asks for more than admission reserved), or the refusal; shielded like admission."""
    if estimate <= ticket.reserved:
        return ticket

    def give_back(more: Ticket | Verdict) -> None:
        if isinstance(more, Ticket) and more.reserved > ticket.reserved:
            shared.give_back_tokens(ticket.key_id, more.reserved - ticket.reserved)

    return await _shielded(shared.top_up(ticket, limits, estimate - ticket.reserved), give_back)


async def _shielded(work: Coroutine[Any, Any, T], undo: Callable[[T], None]) -> T:
    """`work`'s result; if the request is cancelled meanwhile, `work` still runs to its
    end (a database call cut midway would leave its count unknown) and `undo` then gets
    its result, to give back what nobody will use."""
    running = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:

        def finished(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        running.add_done_callback(finished)
        raise


def _check_path(
    request: web.Request, route: RelayRoute, principal: KeyRecord, settings: Settings
) -> None:
    """What the path and the key's role decide, before anything is counted or read."""
    for value in request.match_info.values():
        # A decoded %2F or a dot segment would make the path Ollama sees another route.
        if "/" in value or "\\" in value or value in (".", ".."):
            raise NotFound(f"no such route: {request.path}")
    if route.model_in_path:
        named = request.match_info["model"]
        cloud_refused = is_cloud(named) and not settings.allow_cloud_models
        if cloud_refused or (
            principal.models is not None and not model_allowed(named, principal.models)
        ):
            raise NotFound(f"model '{named}' not found")
    if route.kind == "manage" and principal.role != "admin":
        raise Forbidden(
            f"{route.path.split('/')[1]} manages models and needs an admin key",
            reason=Refused.ADMIN_ONLY,
        )


def _check_content_encoding(coding: str) -> None:
    """aiohttp decodes gzip, deflate, br and zstd request bodies as they are read, and the
    relay then sends them on decoded, without the header. Any other coding could be
    neither read for the allow-list nor sent on honestly: refuse it."""
    if coding.strip().lower() not in DECODED_CODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported; send the body uncompressed"
            " or as gzip, deflate, br or zstd"
        )


def _prompt_estimate(body_bytes: int) -> int:
    """Prompt tokens guessed from a body's size (about four bytes a token), capped."""
    estimate = body_bytes // 4
    # (Not min(), which costs five times this in Python 3.11.)
    return estimate if estimate < PROMPT_ESTIMATE_CAP else PROMPT_ESTIMATE_CAP


def _storage_full() -> ServiceUnavailable:
    """Served, the request's usage record could be kept nowhere: refused before it is."""
    return ServiceUnavailable(
        "the gateway cannot record usage right now (its disk is full and"
        " USAGE_MEMORY_RECORDS records already wait in memory); try again later",
        {"Retry-After": "30"},
        Refused.STORAGE_FULL,
    )


def _too_many(verdict: Verdict) -> TooManyRequests:
    wait = verdict.retry_after
    headers = {"Retry-After": str(wait), **dict(verdict.headers)}
    reason = verdict.reason
    if wait > SDK_RETRY_WAIT_MOST_S:
        # An hourly or daily limit: the OpenAI and Anthropic SDKs would sleep out the
        # Retry-After before trying again (one slept 20 hours); tell them not to, and the
        # caller when to come back.
        headers["x-should-retry"] = "false"
        reason = f"{reason}; it resets at {iso(time.time() + wait)}"
    return TooManyRequests(reason, headers, verdict.refused)


class Exchange:
    """One relayed request on its way: what the usage record and the settlement need,
    and how a graceful stop can end it. (Defaults live on the class, so that making one
    per request sets only what differs.)"""

    status = 502
    first_byte_at: float | None = None
    response: web.StreamResponse | None = None
    upstream: aiohttp.ClientResponse | None = None
    data: bytes | io.BytesIO | AsyncIterator[bytes] | None = None
    body: BodyHold | None = None  # the body memory its body holds, while read in memory
    bytes_in = 0
    ticket_hold: TicketHold | None = None  # admitted by the limits gateways share
    price: Price | None = None  # the model's price when the request started (None: free)
    prompt_estimate = 0
    # Admitted or budgeted on this gateway's own reckoning while PostgreSQL was away: its
    # record (a LocalUsageRecord) brings its tokens and cost to the shared rows.
    by_record = False
    relayed = False  # admitted and sent on: settle it and record it
    settled = False  # its usage record is made (journaled)
    cut = False  # the stream was cut short (Ollama's side broke, or a stop)
    stopping = False  # a graceful stop is ending this request
    stripper: UsageStripper | None = None
    slow_body: RequestTimeout | None = None  # a streamed upload cut for BODY_MIN_RATE
    upstream_name = ""  # the upstream that answered (metrics)

    def __init__(
        self,
        context: RequestContext,
        principal: KeyRecord,
        rate_headers: tuple[tuple[str, str], ...],
        limited: bool,
        task: asyncio.Task[Any] | None,
    ) -> None:
        self.context = context
        self.principal = principal
        self.rate_headers = rate_headers
        self.limited = limited  # the key has limits (else no tokens to reserve)
        self.tap = UsageTap()
        self.task = task  # the handler's, which a graceful stop may cancel
        self.ledger = Ledger()  # what it took, each with its release

    def stop(self) -> None:
        """End this request for a graceful stop: a response being relayed is cut the way
        its dialect signals an error; one not begun yet is answered 503."""
        self.stopping = True
        if self.upstream is not None:
            self.upstream.content.set_exception(GatewayStopping())
        elif self.task is not None:
            self.task.cancel()


class GatewayStopping(Exception):
    """Raised into a relayed stream when a graceful stop ends it."""


async def _take_request(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: Relay, coding: str | None
) -> None:
    """Read the body (bounded, within the body budget), check it against the allow-list,
    reserve the key's tokens, and decide what is sent on."""
    principal = exchange.principal
    if route.stream_request_body:
        if principal.models is not None:
            raise Forbidden(
                "this key may only use some models, and uploads name none",
                reason=Refused.MODEL_NOT_ALLOWED,
            )
        await send_continue(request)
        exchange.data = _counted(request.content, exchange, relay.body_pace)
        exchange.relayed = True
        return
    settings = relay.settings
    hold = exchange.body = exchange.ledger.take(BodyHold(relay.body_budget, principal.id))
    body = await read_body(request, settings.max_body_bytes, relay.body_pace, hold, coding)
    exchange.bytes_in = len(body)
    cloud = settings.allow_cloud_models
    named = (
        # (big embed batches: read them off the event loop)
        await asyncio.to_thread(_named_models, request, body, route, principal, cloud)
        if len(body) > FULL_PARSE_LIMIT
        else _named_models(request, body, route, principal, cloud)
    )
    fields, model = named.fields, named.model
    if model is not None:  # the model's one identity from here on; the record keeps both
        exchange.context.model = model.canonical
        exchange.context.model_sent = model.sent
    if route.kind == "inference":
        exchange.price = relay.key_table.prices.for_model(exchange.context.model)  # as it starts
        exchange.prompt_estimate = _prompt_estimate(len(body))
        if route.usage_on_request and fields.stream and not fields.include_usage:
            body = with_usage_requested(body)
            exchange.stripper = UsageStripper()
    output = 0
    if route.kind == "inference" and route.outputs_tokens:
        # The request's own cap where it sets one (Ollama's -1 and -2 mean none).
        cap = fields.max_output
        output = cap if cap is not None and cap > 0 else settings.token_reserve
        most = settings.token_reserve * 64
        if output > most:  # (not min(): see _prompt_estimate)
            output = most
    budgeted = bool(principal.budgets) and exchange.price is not None
    top_up: TopUp | None = None
    if exchange.limited and route.kind == "inference":
        estimate = exchange.prompt_estimate + output
        held = exchange.ticket_hold
        if held is not None:
            limits = relay.limiter.limits_for(principal)
            if budgeted and relay.shared_budgets is not None:
                if limits.tokens_per_day and estimate > held.ticket.reserved:
                    # Taken with the budgets' reservation: one round trip for both.
                    top_up = TopUp(held.ticket, limits, estimate - held.ticket.reserved)
            else:
                more = await _top_up(held.shared, held.ticket, limits, estimate)
                if isinstance(more, Verdict):
                    raise _too_many(more)
                held.ticket = more
        else:
            reserved = relay.limiter.reserve_tokens(principal, estimate, time.time())
            if not isinstance(reserved, int):
                raise _too_many(reserved)
            if reserved:
                exchange.ledger.take(TokenHold(relay.limiter, principal.id, reserved))
    if budgeted:
        await _reserve_budget(exchange, relay, output, top_up)
    # aiohttp writes a BytesIO in slices, yielding to the loop between them.
    exchange.data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
    exchange.relayed = True


async def _reserve_budget(
    exchange: Exchange, relay: Relay, output: int, top_up: TopUp | None
) -> None:
    """Check the budgets of the key and its user, and reserve the request's reserved cost
    (its price per request, its prompt estimate and `output` tokens at the token prices,
    BUDGET_TIME_RESERVE seconds at the per-second price) against them: across gateways on
    PostgreSQL (one round trip, which also takes the token `top_up`, shielded from
    cancellation like admission), else, or while the database is away and
    LIMITS_WHEN_DATABASE_AWAY is `local`, on this gateway's reckoning."""
    price = exchange.price
    assert price is not None
    lines = exchange.principal.budgets
    per_request = price.per_request_nano
    reserve = price.reserve(exchange.prompt_estimate, output, relay.settings.budget_time_reserve)
    now = time.time()
    shared = relay.shared_budgets
    verdict: Refusal | Verdict | bool | None = None
    if shared is not None:

        def give_back(reserved: Refusal | Verdict | bool | None) -> None:
            if reserved is True:
                shared.give_back(lines, reserve, 0, time.time())
                if top_up is not None and relay.shared is not None:
                    relay.shared.give_back_tokens(top_up.ticket.key_id, top_up.tokens)

        verdict = await _shielded(
            shared.reserve(lines, per_request, reserve, now, top_up), give_back
        )
        if isinstance(verdict, Verdict):
            raise _too_many(verdict)
        if verdict is None and shared.when_away == "refuse":
            raise ServiceUnavailable(
                "budgets cannot be checked: the database is unreachable", {"Retry-After": "5"}
            )
    if verdict is True:
        held = exchange.ticket_hold
        if top_up is not None and held is not None:
            held.ticket = top_up.ticket.with_more(top_up.tokens)
    else:
        if verdict is None:
            verdict = relay.budgets.reserve(lines, per_request, reserve, now)
            if shared is not None:  # decided here: PostgreSQL is away
                exchange.by_record = True
        if verdict is not None:
            assert isinstance(verdict, Refusal)
            headers = (
                {} if verdict.retry_after is None else {"Retry-After": str(verdict.retry_after)}
            )
            raise BudgetExhausted(verdict.message, headers, Refused.OVER_BUDGET)
    exchange.ledger.take(BudgetHold(relay.budgets, shared, lines, reserve, verdict is True))


def _named_models(
    request: web.Request, body: bytes, route: RelayRoute, caller: KeyRecord, cloud: bool
) -> Named:
    return named_models(
        body,
        route,
        caller,
        cloud,
        request.headers.get("Content-Type", ""),
        request.rel_url.raw_query_string,
    )


async def _counted(
    content: aiohttp.StreamReader, exchange: Exchange, pace: BodyPace
) -> AsyncIterator[bytes]:
    """An upload passed on as it arrives, counting what really came (not what
    Content-Length claimed), and cut when it comes slower than BODY_MIN_RATE."""
    watched = pace.watch(content)
    try:
        async for chunk in content.iter_any():
            exchange.bytes_in += len(chunk)
            yield chunk
    except SlowBody:
        exchange.slow_body = pace.refusal()  # (the upstream request fails with it)
        raise
    finally:
        pace.unwatch(watched)


async def _forward(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: Relay
) -> web.StreamResponse:
    """Send the request to the best upstream for it, and on to the next when one refuses
    the connection, fails or answers 502/503/504 before anything reached the client (a
    body read into memory can be sent again; an upload streamed through cannot)."""
    pool = relay.pool
    if pool.single:
        only = pool.upstreams[0]
        if only.config.max_concurrent is None and not pool.closed:  # the usual gateway:
            only.in_flight += 1  # nothing to choose, nor to wait for, nor to fail over to
            only.picked += 1
            try:
                return await _forward_to(only, request, route, exchange, relay, False)
            finally:
                pool.release(only)
    else:
        if route.lists_models and request.method in ("GET", "HEAD"):
            return await send_union(request, route, exchange, relay)  # (HEAD: no body)
        if route.native and route.path == "/pull" and UPSTREAM_HEADER not in request.headers:
            return await pull_everywhere(request, route, exchange, relay)
    # A cloud API paid with the gateway's key serves only keys whose allow-list names the
    # model (it passed the allow-list already); listing its models costs nothing.
    closed_ok = route.kind != "inference" or exchange.principal.models is not None
    candidates = pool.candidates(
        route, _model_of(request, route, exchange), _named(request, route), closed_ok
    )
    replayable = isinstance(exchange.data, bytes | io.BytesIO)
    key_id = exchange.principal.id
    while True:
        upstream = pool.try_acquire(candidates) or await pool.wait_for_slot(candidates, key_id)
        if isinstance(exchange.data, io.BytesIO):
            exchange.data.seek(0)
        upstream.picked += 1
        try:
            more = replayable and len(candidates) > 1
            return await _forward_to(upstream, request, route, exchange, relay, more)
        except _TryNext as exc:
            pool.failed(upstream, exc.reason)
        except (UpstreamUnreachable, UpstreamTimeout) as exc:
            if exchange.response is None:
                pool.failed(upstream, exc.message)
            raise
        finally:
            pool.release(upstream)
        candidates = [c for c in candidates if c is not upstream]  # (after a _TryNext)


class _TryNext(Exception):
    """This upstream failed before anything reached the client: try the next one."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _forward_to(
    target: Upstream,
    request: web.Request,
    route: RelayRoute,
    exchange: Exchange,
    relay: Relay,
    more: bool,
) -> web.StreamResponse:
    """One try at one upstream; with `more` (another may be tried after it) a failure
    before anything reached the client raises _TryNext, and the body is kept."""
    settings = relay.settings
    config = target.config
    upstream_session = relay.upstream
    assert upstream_session is not None  # set when the app started
    url = upstream_url(request, settings, route, config)
    headers = request_headers(request, config)
    patterns = exchange.principal.models
    data = exchange.data
    exchange.upstream_name = config.name
    if not relay.pool.single:  # (one upstream: the access line stays as it was)
        exchange.context.upstream = config.name
    try:
        async with upstream_session.request(
            request.method,
            url,
            data=data,
            headers=headers,
            skip_auto_headers=own_headers_missing(request),
            allow_redirects=False,
        ) as upstream:
            if upstream.status in FAILOVER_STATUSES:
                if more:
                    raise _TryNext(f"answered {upstream.status}")
                relay.pool.failed(target, f"answered {upstream.status}")  # and it is relayed
            # Ollama has the whole body now: let go of it and of its share of the budget.
            del data
            exchange.data = None
            if exchange.body is not None:
                exchange.body.give_back_now()
            exchange.upstream = upstream
            exchange.status = upstream.status
            response = exchange.response = _response_for(upstream, request, exchange)
            try:
                if (
                    route.lists_models
                    and request.method == "GET"
                    and (patterns is not None or not settings.allow_cloud_models)
                ):
                    await _send_filtered(upstream, response, request, exchange, route, relay)
                else:
                    await response.prepare(request)
                    await _pump(upstream, response, request, exchange, route, relay)
            except ConnectionResetError:
                # The client left: close (not pool) the upstream connection so Ollama stops.
                exchange.context.client_gone = True
                upstream.close()
            return response
    except aiohttp.ClientConnectorError as exc:
        why = f": {exc.os_error.strerror or exc}"
        if more:
            raise _TryNext(f"cannot reach it{why}") from None
        # (the connector's own text names the address: not for every key's eyes)
        errno = exc.os_error.errno
        said = f": {os.strerror(errno) if errno else type(exc.os_error).__name__}"
        raise _unreachable(exchange, config, "cannot reach ", why, said) from None
    except (aiohttp.ServerTimeoutError, TimeoutError):
        why = (
            " did not answer in time"
            f" (connect {settings.upstream_connect_timeout:g} s,"
            f" read {settings.upstream_read_timeout:g} s)"
        )
        if more and exchange.response is None:
            raise _TryNext(f"it{why}") from None
        exchange.status = 504
        raise _unreachable(exchange, config, "", why, kind=UpstreamTimeout) from None
    except aiohttp.ClientError as exc:
        if exchange.slow_body is not None:  # the upload, not the upstream, failed
            exchange.status = 408
            raise exchange.slow_body from None
        why = f" failed before answering: {type(exc).__name__}"
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


def _settle(request: web.Request, route: RelayRoute, exchange: Exchange, relay: Relay) -> None:
    """Work out what the request used and cost, unwind its ledger with that (its
    reservations replaced by what it used), and queue the usage record (never awaits:
    this also runs when the handler is cancelled)."""
    exchange.settled = True
    now_perf, now = time.perf_counter(), time.time()
    context, principal, tap = exchange.context, exchange.principal, exchange.tap
    prompt, completion = tap.counts()
    estimated = False
    billable = exchange.status < 400  # an error Ollama answered costs nothing
    if route.kind == "inference" and (context.client_gone or exchange.cut):
        if exchange.first_byte_at is not None:
            if completion is None or _without_final_anthropic_counts(route, tap):
                # A stream cut before its final counts: charge what it carried, and its
                # prompt as estimated (Ollama evaluated it before the first token).
                response = exchange.response
                content_type = response.content_type if response is not None else ""
                completion = counted_tokens(tap.newlines, content_type, route.dialect)
                if prompt is None:
                    prompt = exchange.prompt_estimate
                estimated = True
        elif exchange.upstream_name:
            # The client left before any answer, but after the request reached the GPU
            # (a non-streamed answer comes whole at the end): the work ran, so it is
            # charged its per-request price and its prompt as estimated.
            exchange.status = CLIENT_CLOSED
            prompt, completion, estimated, billable = exchange.prompt_estimate, 0, True, True
    elif route.kind == "inference" and billable and prompt is None and completion is None:
        # Answered without counts (Ollama's /api/embeddings and transcriptions report none,
        # nor does a model load): the work ran, so its prompt is charged as estimated.
        prompt, completion, estimated = exchange.prompt_estimate, 0, True
    stripped = exchange.stripper.removed if exchange.stripper is not None else 0
    context.bytes_out = tap.total - stripped
    started, first_byte_at = context.started, exchange.first_byte_at
    price = exchange.price
    cost, model_ns = 0, None
    if price is not None and billable:
        cost, model_ns = _cost(price, tap, prompt, completion, now_perf - started)
    by_record = exchange.by_record
    shared = relay.shared
    if shared is not None and not by_record and shared.maybe_away():
        # Its counts' give-back would wait in memory for the database (and die with the
        # process): its record, journaled now, carries them instead.
        by_record = True
    exchange.ledger.unwind(Outcome(True, (prompt or 0) + (completion or 0), cost, now, by_record))
    metrics = relay.metrics
    if metrics is not None:
        metrics.observe(
            route,
            exchange.status,
            context.model,
            exchange.upstream_name,
            now_perf - started,
            None if first_byte_at is None else first_byte_at - started,
            prompt,
            completion,
            cost,
        )
    # Positional, in UsageRecord's field order: keywords cost twice as much on every request.
    usage = relay.usage
    assert usage is not None  # set when the app started
    usage.record(
        (LocalUsageRecord if by_record else UsageRecord)(
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
            exchange.bytes_in,
            context.bytes_out,
            context.client_gone,
            estimated,
            cost,
            model_ns,
            context.model_sent,
        )
    )


def _cost(
    price: Price, tap: UsageTap, prompt: int | None, completion: int | None, seconds: float
) -> tuple[int, int | None]:
    """What the request cost (nano-units) by the price in force when it started, and the
    model time Ollama reported (read only when the price has a per-second part); model
    time Ollama did not report (its /v1 dialects, a request cut short) is the request's
    time through the gateway."""
    model_ns = tap.model_ns() if price.per_second else None
    charged_ns = 0
    if price.per_second:
        charged_ns = model_ns if model_ns is not None else int(seconds * 1e9)
    return price.cost(prompt or 0, completion or 0, charged_ns), model_ns


async def _settle_before_the_end(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: Relay
) -> None:
    """Settle a request whose last bytes are about to go out: its usage record journaled,
    and for a key with a limit of requests at once on limits several gateways share, its
    slot given back in the database, so that a client that waits for each answer finds
    it free whichever gateway its next request reaches."""
    _settle(request, route, exchange, relay)
    held = exchange.ticket_hold
    if held is not None and held.ticket.at_once:
        await held.shared.returned(held.ticket)


def _without_final_anthropic_counts(route: RelayRoute, tap: UsageTap) -> bool:
    """An Anthropic stream's counts come from message_delta at its end; message_start's
    (input tokens, output 0) are all a stream cut before it has."""
    return route.dialect == "anthropic" and not tap.tail_contains(b'"message_delta"')


async def _send_filtered(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    request: web.Request,
    exchange: Exchange,
    route: RelayRoute,
    relay: Relay,
) -> None:
    """A model list (tags, ps, /v1/models) cut down to what the key may use."""
    body = await upstream.read()
    exchange.first_byte_at = time.perf_counter()
    if upstream.status == 200:
        body = filter_model_list(body, exchange.principal.models, relay.settings.allow_cloud_models)
    exchange.tap.feed(body)
    await _settle_before_the_end(request, route, exchange, relay)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()


def _response_for(
    upstream: aiohttp.ClientResponse, request: web.Request, exchange: Exchange
) -> web.StreamResponse:
    headers = response_headers(upstream.headers, exchange.context.request_id, exchange.rate_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    length = upstream.content_length  # (parsed from the header at each reading)
    if length is not None:
        response.content_length = length
    return response


async def _pump(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    request: web.Request,
    exchange: Exchange,
    route: RelayRoute,
    relay: Relay,
) -> None:
    """Copy upstream chunks to the client, letting the usage tap see each one in passing;
    a ConnectionResetError means the client left. The usage record is made (and journaled)
    before the bytes that complete the response go out, so that no client holds a whole
    answer whose record a killed process could lose."""
    tap, stripper = exchange.tap, exchange.stripper
    length = upstream.content_length
    # Lines are what a stream cut before its final counts is charged by: counted in
    # streams, which come without a length from Ollama, or (through something that
    # buffers them) with one.
    tap.lines = length is None or upstream.content_type in STREAM_TYPES
    try:
        async for chunk in upstream.content.iter_any():
            if exchange.first_byte_at is None:
                exchange.first_byte_at = time.perf_counter()
            tap.feed(chunk)
            if tap.total == length:  # the last bytes of a body with a length
                await _settle_before_the_end(request, route, exchange, relay)
            if stripper is not None:
                chunk = stripper.feed(chunk)
                if not chunk:
                    continue
            await response.write(chunk)
        if stripper is not None and (rest := stripper.flush()):
            await response.write(rest)
        if not exchange.settled:  # a chunked body: before its end goes out
            await _settle_before_the_end(request, route, exchange, relay)
    except asyncio.CancelledError:
        exchange.context.client_gone = True
        upstream.close()
        raise
    except ConnectionResetError:
        raise
    except (aiohttp.ClientError, TimeoutError, GatewayStopping) as exc:
        await _end_cut_stream(upstream, response, request, exchange, route, exc)
        return
    await response.write_eof()


async def _end_cut_stream(
    upstream: aiohttp.ClientResponse,
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
    exchange.cut = True
    upstream.close()
    if isinstance(exc, GatewayStopping):
        reason, message = "gateway stopping", "aigateway: the gateway is shutting down"
    else:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        message = f"aigateway: the Ollama stream broke ({reason})"
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
