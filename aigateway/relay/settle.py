"""Settle a request, whatever ended it: what it used and cost, the ledger unwound once
with that, and its usage record queued."""

from __future__ import annotations

import time

from aiohttp import web

from ..http.accesslog import CLIENT_CLOSED
from ..protocol.routes import RelayRoute
from ..protocol.streams import counted_tokens
from ..records import LocalUsageRecord, Price, UsageRecord
from ..usage.writer import UsageTap
from .exchange import Exchange
from .ledger import Ledger, Outcome
from .state import RelayState


def settle(
    request: web.Request,
    route: RelayRoute,
    relay: RelayState,
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
    # An error Ollama answered costs nothing, nor (CACHE_HIT_PRICE=free) a repeated answer
    # (read only for one: `cached` is false on every other request).
    billable = exchange.status < 400 and not (exchange.cached and _free_hit(relay))
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
    observe = relay.observe
    if observe is not None:
        observe(
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
    trace = exchange.trace
    if trace is not None:
        trace.settled(
            exchange.status,
            context.model,
            exchange.upstream_name,
            prompt,
            completion,
            estimated,
            cost,
            first_byte_at,
            exchange.cut_by,
        )
    # Positional, in UsageRecord's field order: keywords cost twice as much on every request.
    usage = relay.usage
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
            exchange.in_flight.stopped_by,
            exchange.cached,
        )
    )
    if route.kind == "manage" and relay.cache is not None and exchange.status < 400:
        # A model pulled, made, copied or deleted: the cache's digests, read again now.
        relay.pool.relist_soon(changed=True)


def _free_hit(relay: RelayState) -> bool:
    """Whether an answer the response cache gave costs nothing (CACHE_HIT_PRICE=free)."""
    return relay.cache is not None and relay.cache.free_hits


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


def _without_final_anthropic_counts(route: RelayRoute, tap: UsageTap) -> bool:
    """An Anthropic stream's counts come from message_delta at its end; message_start's
    (input tokens, output 0) are all a stream cut before it has."""
    return route.dialect == "anthropic" and not tap.tail_contains(b'"message_delta"')
