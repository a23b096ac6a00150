"""Admission and the body: what the path, the key's limits and its budgets decide
before and after its body is read. Each take is registered in the request's ledger as
it is taken; a refusal raises, and the handler's settle gives back what was taken."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from ..access.aliases import AliasTable
from ..access.allowlist import is_cloud, model_allowed
from ..access.budgets import Refusal, iso
from ..access.budgets_shared import TopUp
from ..access.limits import ADMITTED, Limits, Verdict
from ..access.limits_shared import SharedLimits, Ticket
from ..access.resolver import Named, named_models
from ..errors import (
    BudgetExhausted,
    Forbidden,
    NotFound,
    Refused,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
)
from ..http.context import RequestContext
from ..http.expect import send_continue
from ..protocol.body import FULL_PARSE_LIMIT, with_model
from ..protocol.names import ModelRef
from ..protocol.routes import RelayRoute
from ..protocol.streams import UsageStripper, with_usage_requested
from ..records import KeyRecord, Price
from ..settings import Settings
from .bodyread import read_body
from .exchange import Admitted, CountedUpload, Exchange
from .inflight import InFlightRequest
from .ledger import AdmissionHold, BodyHold, BudgetHold, Ledger, TicketHold
from .state import RelayState

# The request codings aiohttp's server decodes (identity: none to decode).
DECODED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd", "identity"})

LARGE_BODY_BYTES = 1024 * 1024

# Refusals whose Retry-After is longer carry x-should-retry: false (see too_many).
SDK_RETRY_WAIT_MOST_S = 60

# A prompt's tokens are guessed at a quarter of its body's bytes, at most this many.
PROMPT_ESTIMATE_CAP = 128 * 1024

T = TypeVar("T")


def check_path(
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


def check_content_encoding(coding: str) -> None:
    """aiohttp decodes gzip, deflate, br and zstd request bodies as they are read, and the
    relay then sends them on decoded, without the header. Any other coding could be
    neither read for the allow-list nor sent on honestly: refuse it."""
    if coding.strip().lower() not in DECODED_CODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported; send the body uncompressed"
            " or as gzip, deflate, br or zstd"
        )


def storage_full() -> ServiceUnavailable:
    """Served, the request's usage record could be kept nowhere: refused before it is."""
    return ServiceUnavailable(
        "the gateway cannot record usage right now (its disk is full and"
        " USAGE_MEMORY_RECORDS records already wait in memory); try again later",
        {"Retry-After": "30"},
        Refused.STORAGE_FULL,
    )


def too_many(verdict: Verdict) -> TooManyRequests:
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


async def admit(
    request: web.Request, route: RelayRoute, principal: KeyRecord, relay: RelayState, ledger: Ledger
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
        raise too_many(verdict)
    hold = ledger.take(AdmissionHold(limiter, principal.id, decided_here))
    ticket_hold = None
    if ticket is not None:
        assert relay.shared is not None
        ticket_hold = ledger.take(TicketHold(relay.shared, ticket))
    return Admitted(verdict.headers, verdict is not ADMITTED, hold, ticket_hold)


async def _admit_shared(
    request: web.Request, route: RelayRoute, principal: KeyRecord, relay: RelayState
) -> tuple[Verdict, Ticket | None]:
    """Admission by the limits several gateways share (PostgreSQL): one round trip,
    reserving the tokens the request is likely to use by what is known before its body
    is read (its length, and TOKEN_RESERVE for the output). On this gateway's own counts
    while the database is away, if LIMITS_WHEN_DATABASE_AWAY says so."""
    shared, limiter, settings = relay.shared, relay.limiter, relay.settings
    assert shared is not None
    reserve = 0
    if route.kind == "inference":
        reserve = prompt_tokens_guessed(request.content_length or 0)
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


def prompt_tokens_guessed(body_bytes: int) -> int:
    """Prompt tokens guessed from a body's size (about four bytes a token), capped."""
    estimate = body_bytes // 4
    # (Not min(), which costs five times this in Python 3.11.)
    return estimate if estimate < PROMPT_ESTIMATE_CAP else PROMPT_ESTIMATE_CAP


async def prepare(
    request: web.Request,
    route: RelayRoute,
    context: RequestContext,
    admitted: Admitted,
    in_flight: InFlightRequest,
    relay: RelayState,
    coding: str | None,
    ledger: Ledger,
) -> Exchange:
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
        upload = CountedUpload(request.content, relay.body_pace)
        return Exchange(context, principal, admitted, in_flight, upload)
    settings = relay.settings
    hold = ledger.take(BodyHold(relay.body_budget, principal.id))
    body = await read_body(request, settings.max_body_bytes, relay.body_pace, hold, coding)
    bytes_in = len(body)
    cloud = settings.allow_cloud_models
    aliases = relay.key_table.aliases
    named = (
        # (big embed batches: read them off the event loop)
        await asyncio.to_thread(_named_models, request, body, route, principal, cloud, aliases)
        if len(body) > FULL_PARSE_LIMIT
        else _named_models(request, body, route, principal, cloud, aliases)
    )
    fields, model = named.fields, named.model
    if model is not None:  # the model's one identity from here on; the record keeps both
        context.model = model.canonical
        context.model_sent = model.sent
        if model.alias:  # the upstream is asked for the model the alias stands for
            body = (
                await asyncio.to_thread(_aliased, body, route, model)
                if len(body) > FULL_PARSE_LIMIT
                else _aliased(body, route, model)
            )
    price = None
    prompt_estimate = 0
    stripper = None
    if route.kind == "inference":
        price = relay.key_table.prices.for_model(context.model)  # as it starts
        prompt_estimate = prompt_tokens_guessed(len(body))
        if route.usage_on_request and fields.stream and not fields.include_usage:
            body = with_usage_requested(body)
            stripper = UsageStripper()
    output = 0
    if route.kind == "inference" and route.outputs_tokens:
        # The request's own cap where it sets one (Ollama's -1 and -2 mean none).
        cap = fields.max_output
        output = cap if cap is not None and cap > 0 else settings.token_reserve
        most = settings.token_reserve * 64
        if output > most:  # (not min(): see prompt_tokens_guessed)
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
                    raise too_many(more)
                held.ticket = more
        else:
            refused = admitted.hold.reserve_tokens(principal, estimate, time.time())
            if refused is not None:
                raise too_many(refused)
    if budgeted:
        assert price is not None
        reserve = price.reserve(prompt_estimate, output, settings.budget_time_reserve)
        await _reserve_budget(principal, price, reserve, admitted, relay, top_up, ledger)
    cache, cache_key = relay.cache, None
    if cache is not None and cache.covers(route, context.model):
        assert context.model is not None
        cache_key = await cache.key_for(request, route, principal, context.model, body, relay.pool)
    # aiohttp writes a BytesIO in slices, yielding to the loop between them.
    data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
    exchange = Exchange(
        context,
        principal,
        admitted,
        in_flight,
        data,
        bytes_in,
        hold,
        price,
        prompt_estimate,
        stripper,
    )
    if cache_key is not None:
        exchange.cache_key = cache_key
    return exchange


async def _reserve_budget(
    principal: KeyRecord,
    price: Price,
    reserve: int,
    admitted: Admitted,
    relay: RelayState,
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
            raise too_many(verdict)
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
    request: web.Request,
    body: bytes,
    route: RelayRoute,
    caller: KeyRecord,
    cloud: bool,
    aliases: AliasTable,
) -> Named:
    return named_models(
        body,
        route,
        caller,
        cloud,
        request.headers.get("Content-Type", ""),
        request.rel_url.raw_query_string,
        aliases,
    )


def _aliased(body: bytes, route: RelayRoute, model: ModelRef) -> bytes:
    return with_model(body, route.model_fields, model.sent, model.canonical)
