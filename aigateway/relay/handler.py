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
from .ledger import (
    AdmissionHold,
    BodyHold,
    BudgetHold,
    InFlightHold,
    Ledger,
    Outcome,
    TicketHold,
    TokenHold,
    UpstreamSlot,
)
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
    """Admit, read the body, forward and pump, settle: in that order, so that a key over
    its limits is refused before a byte of its body is read (and held). Every take goes
    into the request's one ledger as it is taken; the `finally` settles the request once,
    whatever ended it, and only then do the bytes that complete its response go out."""
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
    ledger = Ledger()
    admitted = await _admit(request, route, principal, relay, ledger)
    stopper = Stopper(asyncio.current_task(relay.loop))
    ledger.take(InFlightHold(relay.in_flight, stopper))
    exchange: Exchange | None = None  # made once the request is sent on
    try:
        prepared = await _take_request(request, route, context, admitted, relay, coding, ledger)
        exchange = Exchange(context, principal, admitted, prepared, stopper)
        response, end = await _forward(request, route, exchange, relay, ledger)
    except asyncio.CancelledError as cancelled:
        if cancelled.args[:1] != (STOPPING,):
            context.client_gone = True  # (the server cancels a handler whose client left)
            raise
        # A graceful stop ended a request still reading its body or waiting for Ollama's
        # first byte: answer it, rather than drop the connection.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if exchange is not None:
            exchange.status = 503
        raise ServiceUnavailable("the gateway is shutting down", {"Retry-After": "5"}) from None
    finally:
        _settle(request, route, relay, ledger, exchange)
    if end is not None:
        await _finish(request, response, end, admitted.ticket_hold)
    return response


class Admitted:
    """What admission decided: the rate-limit headers every answer carries, whether the
    key has limits (else no tokens to reserve), and the shared limits' ticket."""

    __slots__ = ("limited", "rate_headers", "ticket_hold")

    def __init__(
        self,
        rate_headers: tuple[tuple[str, str], ...],
        limited: bool,
        ticket_hold: TicketHold | None,
    ) -> None:
        self.rate_headers = rate_headers
        self.limited = limited
        self.ticket_hold = ticket_hold  # admitted by the limits gateways share


async def _admit(
    request: web.Request, route: RelayRoute, principal: KeyRecord, relay: Relay, ledger: Ledger
) -> Admitted:
    """Admission by the key's limits (its slot and counts registered in the ledger), or
    429 with nothing taken."""
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
    ledger.take(AdmissionHold(limiter, principal.id, decided_here))
    ticket_hold = None
    if ticket is not None:
        assert relay.shared is not None
        ticket_hold = ledger.take(TicketHold(relay.shared, ticket))
    return Admitted(verdict.headers, verdict is not ADMITTED, ticket_hold)


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


# The message a graceful stop cancels a request's task with (Stopper.stop).
STOPPING = "aigateway: the gateway is stopping"


class Stopper:
    """How a graceful stop ends one request: a response being relayed is cut the way its
    dialect signals an error; one not begun yet is cancelled, and answered 503."""

    __slots__ = ("task", "upstream")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task  # the handler's
        self.upstream: aiohttp.ClientResponse | None = None  # once an upstream answers

    def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.content.set_exception(GatewayStopping())
        elif self.task is not None:
            self.task.cancel(STOPPING)


class GatewayStopping(Exception):
    """Raised into a relayed stream when a graceful stop ends it."""


class CountedUpload:
    """An upload passed on as it arrives, counting what really came (not what
    Content-Length claimed), and cut when it comes slower than BODY_MIN_RATE."""

    __slots__ = ("bytes_in", "content", "pace", "slow_body")

    def __init__(self, content: aiohttp.StreamReader, pace: BodyPace) -> None:
        self.content = content
        self.pace = pace
        self.bytes_in = 0
        self.slow_body: RequestTimeout | None = None  # cut for BODY_MIN_RATE

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        pace = self.pace
        watched = pace.watch(self.content)
        try:
            async for chunk in self.content.iter_any():
                self.bytes_in += len(chunk)
                yield chunk
        except SlowBody:
            self.slow_body = pace.refusal()  # (the upstream request fails with it)
            raise
        finally:
            pace.unwatch(watched)


class Prepared:
    """A request read and reserved for, ready to be sent on: what is sent, and what its
    settlement needs of it."""

    __slots__ = ("body_hold", "bytes_in", "data", "price", "prompt_estimate", "stripper")

    def __init__(
        self,
        data: bytes | io.BytesIO | CountedUpload,
        bytes_in: int = 0,
        body_hold: BodyHold | None = None,
        price: Price | None = None,
        prompt_estimate: int = 0,
        stripper: UsageStripper | None = None,
    ) -> None:
        self.data = data
        self.bytes_in = bytes_in  # the body's bytes (an upload counts its own)
        self.body_hold = body_hold  # the body memory it holds, while read in memory
        self.price = price  # the model's price when the request started (None: free)
        self.prompt_estimate = prompt_estimate
        self.stripper = stripper  # takes out the usage the relay asked for on its own


class Exchange:
    """One relayed request on its way, made once it is sent on: what it carries from
    admission and its body, and what its answer has brought so far (what the usage
    record and the settlement need). (Defaults of what its answer brings live on the
    class, so that making one per request sets only what is known.)"""

    status = 502
    first_byte_at: float | None = None
    response: web.StreamResponse | None = None
    upstream_name = ""  # the upstream that answered (metrics)
    cut_by: str | None = None  # why the stream was cut short (Ollama's side broke, a stop)

    def __init__(
        self,
        context: RequestContext,
        principal: KeyRecord,
        admitted: Admitted,
        prepared: Prepared,
        stopper: Stopper,
    ) -> None:
        self.context = context
        self.principal = principal
        self.rate_headers = admitted.rate_headers
        data = prepared.data
        self.data: bytes | io.BytesIO | CountedUpload | None = data  # None once sent
        self.upload = data if isinstance(data, CountedUpload) else None
        self.bytes_in = prepared.bytes_in
        self.body_hold = prepared.body_hold
        self.price = prepared.price
        self.prompt_estimate = prepared.prompt_estimate
        self.stripper = prepared.stripper
        self.stopper = stopper
        self.tap = UsageTap()

    def received(self) -> int:
        """The request body's bytes that came (an upload's, as they were passed on)."""
        upload = self.upload
        return self.bytes_in if upload is None else upload.bytes_in


async def _take_request(
    request: web.Request,
    route: RelayRoute,
    context: RequestContext,
    admitted: Admitted,
    relay: Relay,
    coding: str | None,
    ledger: Ledger,
) -> Prepared:
    """Read the body (bounded, within the body budget), check it against the allow-list,
    reserve the key's tokens and budgets (each registered in the ledger as it is taken),
    and decide what is sent on."""
    principal = context.principal
    assert principal is not None
    if route.stream_request_body:
        if principal.models is not None:
            raise Forbidden(
                "this key may only use some models, and uploads name none",
                reason=Refused.MODEL_NOT_ALLOWED,
            )
        await send_continue(request)
        return Prepared(CountedUpload(request.content, relay.body_pace))
    settings = relay.settings
    hold = ledger.take(BodyHold(relay.body_budget, principal.id))
    body = await read_body(request, settings.max_body_bytes, relay.body_pace, hold, coding)
    bytes_in = len(body)
    cloud = settings.allow_cloud_models
    named = (
        # (big embed batches: read them off the event loop)
        await asyncio.to_thread(_named_models, request, body, route, principal, cloud)
        if len(body) > FULL_PARSE_LIMIT
        else _named_models(request, body, route, principal, cloud)
    )
    fields, model = named.fields, named.model
    if model is not None:  # the model's one identity from here on; the record keeps both
        context.model = model.canonical
        context.model_sent = model.sent
    price = None
    prompt_estimate = 0
    stripper = None
    if route.kind == "inference":
        price = relay.key_table.prices.for_model(context.model)  # as it starts
        prompt_estimate = _prompt_estimate(len(body))
        if route.usage_on_request and fields.stream and not fields.include_usage:
            body = with_usage_requested(body)
            stripper = UsageStripper()
    output = 0
    if route.kind == "inference" and route.outputs_tokens:
        # The request's own cap where it sets one (Ollama's -1 and -2 mean none).
        cap = fields.max_output
        output = cap if cap is not None and cap > 0 else settings.token_reserve
        most = settings.token_reserve * 64
        if output > most:  # (not min(): see _prompt_estimate)
            output = most
    budgeted = bool(principal.budgets) and price is not None
    top_up: TopUp | None = None
    if admitted.limited and route.kind == "inference":
        estimate = prompt_estimate + output
        held = admitted.ticket_hold
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
                ledger.take(TokenHold(relay.limiter, principal.id, reserved))
    if budgeted:
        assert price is not None
        reserve = price.reserve(prompt_estimate, output, settings.budget_time_reserve)
        await _reserve_budget(principal, price, reserve, admitted, relay, top_up, ledger)
    # aiohttp writes a BytesIO in slices, yielding to the loop between them.
    data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
    return Prepared(data, bytes_in, hold, price, prompt_estimate, stripper)


async def _reserve_budget(
    principal: KeyRecord,
    price: Price,
    reserve: int,
    admitted: Admitted,
    relay: Relay,
    top_up: TopUp | None,
    ledger: Ledger,
) -> None:
    """Check the budgets of the key and its user, and reserve the request's reserved cost
    (`reserve`: its price per request, its prompt estimate and output tokens at the token
    prices, BUDGET_TIME_RESERVE seconds at the per-second price) against them: across
    gateways on PostgreSQL (one round trip, which also takes the token `top_up`, shielded
    from cancellation like admission), else, or while the database is away and
    LIMITS_WHEN_DATABASE_AWAY is `local`, on this gateway's reckoning."""
    lines = principal.budgets
    per_request = price.per_request_nano
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
        held = admitted.ticket_hold
        if top_up is not None and held is not None:
            held.ticket = top_up.ticket.with_more(top_up.tokens)
    else:
        if verdict is None:  # (with shared budgets: decided here, PostgreSQL is away)
            verdict = relay.budgets.reserve(lines, per_request, reserve, now)
        if verdict is not None:
            assert isinstance(verdict, Refusal)
            headers = (
                {} if verdict.retry_after is None else {"Retry-After": str(verdict.retry_after)}
            )
            raise BudgetExhausted(verdict.message, headers, Refused.OVER_BUDGET)
    ledger.take(BudgetHold(relay.budgets, shared, lines, reserve, verdict is True))


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


async def _forward(
    request: web.Request, route: RelayRoute, exchange: Exchange, relay: Relay, ledger: Ledger
) -> tuple[web.StreamResponse, bytes | None]:
    """Send the request to the best upstream for it, and on to the next when one refuses
    the connection, fails or answers 502/503/504 before anything reached the client (a
    body read into memory can be sent again; an upload streamed through cannot). The
    response, and the bytes that complete it once the request is settled (None: it is
    complete, or was cut)."""
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
    key_id = exchange.principal.id
    while True:
        upstream = pool.try_acquire(candidates) or await pool.wait_for_slot(candidates, key_id)
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
) -> tuple[web.StreamResponse, bytes | None]:
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
            if exchange.body_hold is not None:
                exchange.body_hold.give_back_now()
            exchange.stopper.upstream = upstream
            exchange.status = upstream.status
            response = exchange.response = _response_for(upstream, request, exchange)
            try:
                if (
                    route.lists_models
                    and request.method == "GET"
                    and (patterns is not None or not settings.allow_cloud_models)
                ):
                    return response, await _send_filtered(upstream, exchange, relay)
                await response.prepare(request)
                return response, await _pump(upstream, response, request, exchange, route)
            except ConnectionResetError:
                # The client left: close (not pool) the upstream connection so Ollama stops.
                exchange.context.client_gone = True
                upstream.close()
            return response, None
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
        upload = exchange.upload
        if upload is not None and upload.slow_body is not None:  # the upload failed
            exchange.status = 408
            raise upload.slow_body from None
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


def _settle(
    request: web.Request,
    route: RelayRoute,
    relay: Relay,
    ledger: Ledger,
    exchange: Exchange | None,
) -> None:
    """End the request, whatever ended it: unwind its ledger once, in reverse order; for a
    request sent on (`exchange`), with what it used and cost (its reservations replaced by
    that), and queue its usage record; for one refused after admission, with nothing
    used. Never awaits: this also runs when the handler is cancelled."""
    if exchange is None:
        ledger.unwind(Outcome(False, 0, 0, time.time()))
        return
    now_perf, now = time.perf_counter(), time.time()
    context, principal, tap = exchange.context, exchange.principal, exchange.tap
    prompt, completion = tap.counts()
    estimated = False
    billable = exchange.status < 400  # an error Ollama answered costs nothing
    if route.kind == "inference" and (context.client_gone or exchange.cut_by is not None):
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
    shared = relay.shared
    # Its counts' give-back would wait in memory for the database (and die with the
    # process) while the database seems away: its record, journaled now, carries them.
    by_record = ledger.by_record() or (shared is not None and shared.maybe_away())
    ledger.unwind(Outcome(True, (prompt or 0) + (completion or 0), cost, now, by_record))
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
            exchange.received(),
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


async def _finish(
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


def _without_final_anthropic_counts(route: RelayRoute, tap: UsageTap) -> bool:
    """An Anthropic stream's counts come from message_delta at its end; message_start's
    (input tokens, output 0) are all a stream cut before it has."""
    return route.dialect == "anthropic" and not tap.tail_contains(b'"message_delta"')


async def _send_filtered(
    upstream: aiohttp.ClientResponse, exchange: Exchange, relay: Relay
) -> bytes:
    """A model list (tags, ps, /v1/models) cut down to what the key may use: the body,
    sent once the request is settled."""
    body = await upstream.read()
    exchange.first_byte_at = time.perf_counter()
    if upstream.status == 200:
        body = filter_model_list(body, exchange.principal.models, relay.settings.allow_cloud_models)
    exchange.tap.feed(body)
    response = exchange.response
    assert response is not None
    response.content_length = len(body)
    return body


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
) -> bytes | None:
    """Copy upstream chunks to the client, letting the usage tap see each one in passing;
    a ConnectionResetError means the client left. The bytes that complete the response
    (a body's last chunk when it has a length; else only its chunked ending) are kept
    back and returned, to go out once the request is settled, so that no client holds a
    whole answer whose record a killed process could lose. None: the stream was cut, and
    ended here the way its dialect signals it."""
    tap, stripper = exchange.tap, exchange.stripper
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
            if stripper is not None:
                chunk = stripper.feed(chunk)
                if not chunk:
                    continue
            if tap.total == length:  # the last bytes of a body with a length
                end = chunk
                continue
            await response.write(chunk)
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
    except (aiohttp.ClientError, TimeoutError, GatewayStopping) as exc:
        await _end_cut_stream(upstream, response, request, exchange, route, exc)
        return None
    return end


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
    upstream.close()
    if isinstance(exc, GatewayStopping):
        reason, message = "gateway stopping", "aigateway: the gateway is shutting down"
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
