"""The relay's steps, each called alone (no server, no database): admit, prepare, pump,
finish and settle take their inputs and give their outputs, and the ledger gives each
take back once, the last first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest
from aiohttp import StreamReader, web
from aiohttp.test_utils import make_mocked_request

from aigateway import Settings
from aigateway.access.budgets import Budgets
from aigateway.access.keytable import KeyTable
from aigateway.access.limits import Limiter, Limits
from aigateway.errors import BadRequest, BudgetExhausted, TooManyRequests, UnsupportedMediaType
from aigateway.http.context import DIALECT, RequestContext
from aigateway.protocol.routes import RELAY_ROUTES
from aigateway.records import KeyLimits, KeyRecord, LocalUsageRecord, Price, UsageRecord
from aigateway.relay.admit import (
    PROMPT_ESTIMATE_CAP,
    admit,
    check_content_encoding,
    prepare,
    prompt_tokens_guessed,
    too_many,
)
from aigateway.relay.bodybudget import BodyBudget
from aigateway.relay.bodyread import read_body
from aigateway.relay.exchange import Admitted, Exchange
from aigateway.relay.handler import relay_handler
from aigateway.relay.inflight import GatewayStopping, InFlight, InFlightRequest
from aigateway.relay.ledger import AdmissionHold, BodyHold, BudgetHold, Ledger, Outcome
from aigateway.relay.pump import finish, pump
from aigateway.relay.settle import settle
from aigateway.relay.state import RelayState
from aigateway.upstreams.pool import Pool
from aigateway.upstreams.transport import Transport

CHAT = next(r for r in RELAY_ROUTES if r.native and r.path == "/chat")
FINAL = b'{"done":true,"prompt_eval_count":7,"eval_count":5}\n'


def _key(limits: KeyLimits | None = None, **fields: Any) -> KeyRecord:
    return KeyRecord(
        7, "alice", "laptop", "h", "p", "user", 0.0, None, None, False, None,
        limits or KeyLimits(), **fields,
    )  # fmt: skip


class Records:
    """A usage writer that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.full = False

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)


def _state(records: Records | None = None, **settings: Any) -> RelayState:
    """The relay's state with nothing running: no way out to upstreams (the steps called
    here never send), and a usage writer that keeps what it is given."""
    config = Settings(ollama_base_url="http://127.0.0.1:9", **settings)
    transport = mock.Mock(spec=Transport)
    return RelayState(
        config,
        pool=Pool(
            config.upstream_list,
            config.upstream_check_interval,
            config.upstream_queue_timeout,
            transport,
        ),
        transport=transport,
        key_table=KeyTable(),
        limiter=Limiter(Limits()),
        shared=None,
        budgets=Budgets("USD"),
        shared_budgets=None,
        body_budget=BodyBudget(1 << 20),
        in_flight=InFlight(),
        usage=records or Records(),  # type: ignore[arg-type]
        observe=None,
        loop=mock.Mock(spec=asyncio.AbstractEventLoop),
    )


def _request(body: bytes = b"", path: str = "/api/chat", **headers: str) -> web.Request:
    protocol = mock.Mock(_reading_paused=False)
    content = StreamReader(protocol, 1 << 16, loop=asyncio.get_running_loop())
    content.feed_data(body)
    content.feed_eof()
    return make_mocked_request(
        "POST",
        path,
        headers={"Content-Length": str(len(body)), "Content-Type": "application/json", **headers},
        payload=content,
    )


def _context(principal: KeyRecord) -> RequestContext:
    context = RequestContext("rid", 0.0)
    context.principal = principal
    return context


# --- admit ------------------------------------------------------------------------------


def test_a_content_encoding_aiohttp_cannot_decode_is_refused() -> None:
    check_content_encoding("gzip")
    check_content_encoding(" Identity ")
    with pytest.raises(UnsupportedMediaType):
        check_content_encoding("compress")


def test_a_prompt_is_guessed_at_a_token_for_four_bytes_capped() -> None:
    assert prompt_tokens_guessed(400) == 100
    assert prompt_tokens_guessed(10**9) == PROMPT_ESTIMATE_CAP


def test_a_refusal_that_resets_in_over_a_minute_says_do_not_retry() -> None:
    from aigateway.access.limits import Verdict

    soon = too_many(Verdict(False, "over rpm", 30))
    assert soon.headers["Retry-After"] == "30" and "x-should-retry" not in soon.headers
    later = too_many(Verdict(False, "over the day's tokens", 3600))
    assert later.headers["x-should-retry"] == "false" and "resets at" in later.message


async def test_admission_takes_a_slot_into_the_ledger_and_refuses_past_the_limit() -> None:
    state = _state()
    principal = _key(KeyLimits(max_concurrent=1))
    ledger = Ledger()
    admitted = await admit(_request(), CHAT, principal, state, ledger)
    assert admitted.limited and admitted.ticket_hold is None
    assert len(ledger) == 1 and state.limiter.usage_of(principal, 0)["in_flight"] == 1
    with pytest.raises(TooManyRequests):
        await admit(_request(), CHAT, principal, state, Ledger())  # nothing taken
    ledger.unwind(Outcome(False, 0, 0, 0.0))
    assert state.limiter.usage_of(principal, 0)["in_flight"] == 0


# --- prepare ----------------------------------------------------------------------------


async def test_prepare_reads_the_body_names_the_model_and_reserves_its_tokens() -> None:
    state = _state()
    principal = _key(KeyLimits(tokens_per_day=10_000))
    ledger = Ledger()
    admitted = await admit(_request(), CHAT, principal, state, ledger)
    body = b'{"model":"llama3.2","messages":[],"options":{"num_predict":50}}'
    context = _context(principal)
    in_flight = InFlightRequest(state.in_flight, None, context, CHAT)
    prepared = await prepare(
        _request(body), CHAT, context, admitted, in_flight, state, None, ledger
    )
    assert prepared.data == body and prepared.bytes_in == len(body)
    assert prepared.prompt_estimate == len(body) // 4 and prepared.price is None
    assert prepared.rate_headers == admitted.rate_headers and prepared.in_flight is in_flight
    assert context.model == "llama3.2:latest" and context.model_sent == "llama3.2"
    reserved = state.limiter.usage_of(principal, 0)["tokens_reserved"]
    assert reserved == len(body) // 4 + 50
    assert state.body_budget.held == len(body)
    ledger.unwind(Outcome(False, 0, 0, 0.0))  # admission, body memory, tokens: all back
    assert state.body_budget.held == 0
    use = state.limiter.usage_of(principal, 0)
    assert use["tokens_reserved"] == 0 and use["in_flight"] == 0


async def test_a_body_here_whole_is_taken_at_once_and_one_short_of_its_length_refused() -> None:
    state = _state()
    body = b'{"model":"llama3.2","messages":[]}'
    hold = BodyHold(state.body_budget, 7)
    assert await read_body(_request(body + body), 1 << 20, state.body_pace, hold, None) == (
        body + body
    )
    assert hold.held == hold.committed == 2 * len(body)
    hold.give_back_now()
    # Its head said more than came before the body ended.
    short = _request(body, **{"Content-Length": str(len(body) + 5)})
    with pytest.raises(BadRequest, match="ended before its Content-Length"):
        await read_body(short, 1 << 20, state.body_pace, BodyHold(state.body_budget, 7), None)


async def test_a_budget_refusal_in_prepare_leaves_its_earlier_takes_in_the_ledger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused by the budget after the token reservation: the reservation is in the
    ledger (with the admission it joins), so the handler's settle gives it back."""
    state = _state()
    price = Price("*", per_request=10**9)
    monkeypatch.setattr(state.key_table.prices, "for_model", lambda model: price)
    from aigateway.records import Budget, BudgetLine

    line = BudgetLine("key:7", "key 'alice/laptop'", Budget(1, "monthly"))
    principal = _key(KeyLimits(tokens_per_day=10_000), budgets=(line,))
    ledger = Ledger()
    admitted = await admit(_request(), CHAT, principal, state, ledger)
    body = b'{"model":"llama3.2","messages":[]}'
    in_flight = InFlightRequest(state.in_flight, None, _context(principal), CHAT)
    with pytest.raises(BudgetExhausted):
        await prepare(
            _request(body), CHAT, _context(principal), admitted, in_flight, state, None, ledger
        )
    assert len(ledger) == 2  # admission with its tokens, body memory (no budget: refused)
    assert state.limiter.usage_of(principal, 0)["tokens_reserved"] != 0
    ledger.unwind(Outcome(False, 0, 0, 0.0))
    assert state.limiter.usage_of(principal, 0)["tokens_reserved"] == 0


# --- pump and finish --------------------------------------------------------------------


class Upstream:
    """An upstream response: its chunks, then its end (or an exception)."""

    def __init__(
        self, chunks: list[bytes], length: int | None = None, fails: Exception | None = None
    ) -> None:
        self.chunks = chunks
        self.content_length = length
        self.content_type = "application/x-ndjson"
        self.fails = fails
        self.closed = False
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fails is not None:
            raise self.fails

    def close(self) -> None:
        self.closed = True


class Response:
    """A client response that keeps what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.ended = False
        self.prepared = True
        self.content_length: int | None = None
        self.content_type = "application/x-ndjson"

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def write_eof(self) -> None:
        self.ended = True


def _exchange(principal: KeyRecord | None = None, price: Price | None = None) -> Exchange:
    principal = principal or _key()
    admitted = Admitted((), False, AdmissionHold(Limiter(Limits()), principal.id), None)
    context = _context(principal)
    in_flight = InFlightRequest(InFlight(), None, context, CHAT)
    return Exchange(context, principal, admitted, in_flight, b"{}", 2, None, price, 10)


async def _pump(upstream: Upstream, exchange: Exchange, response: Response) -> bytes | None:
    request = make_mocked_request("POST", "/api/chat")
    return await pump(upstream, response, request, exchange, CHAT)  # type: ignore[arg-type]


async def test_pump_keeps_back_the_last_chunk_of_a_body_with_a_length() -> None:
    exchange, response = _exchange(), Response()
    chunks = [b'{"a":1}\n', FINAL]
    end = await _pump(Upstream(chunks, length=len(b"".join(chunks))), exchange, response)
    assert response.written == [chunks[0]] and end == FINAL and not response.ended
    assert exchange.tap.total == len(b"".join(chunks)) and exchange.first_byte_at is not None


async def test_pump_writes_a_chunked_body_whole_and_keeps_back_only_its_ending() -> None:
    exchange, response = _exchange(), Response()
    chunks = [b'{"a":1}\n', FINAL]
    assert await _pump(Upstream(chunks), exchange, response) == b""
    assert response.written == chunks and not response.ended
    assert exchange.tap.counts() == (7, 5)


async def test_pump_ends_a_cut_stream_in_its_dialect_and_says_why() -> None:
    exchange, response = _exchange(), Response()
    upstream = Upstream([b'{"a":1}\n'], fails=GatewayStopping())
    assert await _pump(upstream, exchange, response) is None
    assert exchange.cut_by == "gateway stopping" and upstream.closed
    assert b"shutting down" in response.written[-1] and response.ended


async def test_finish_sends_the_kept_back_bytes_and_ends_the_response() -> None:
    response = Response()
    request = make_mocked_request("POST", "/api/chat")
    await finish(request, response, FINAL, None)  # type: ignore[arg-type]
    assert response.written == [FINAL] and response.ended


# --- settle -----------------------------------------------------------------------------


class Recorded:
    """A take that notes the outcomes it is given back with."""

    by_record = False

    def __init__(self, log: list[tuple[str, Outcome]], name: str) -> None:
        self.log = log
        self.name = name

    def release(self, outcome: Outcome) -> None:
        self.log.append((self.name, outcome))


def test_settle_of_a_request_never_sent_on_gives_back_with_nothing_used() -> None:
    records, log = Records(), []  # type: ignore[var-annotated]
    ledger = Ledger()
    ledger.take(Recorded(log, "slot"))
    settle(make_mocked_request("POST", "/api/chat"), CHAT, _state(records), ledger, None)
    ((name, outcome),) = log
    assert name == "slot" and not outcome.sent and outcome.tokens == outcome.cost == 0
    assert records.records == []


def test_settle_charges_what_the_answer_counted_and_records_it_once() -> None:
    records, log = Records(), []  # type: ignore[var-annotated]
    price = Price("*", per_request=1_000, per_million_input=1_000_000)
    exchange = _exchange(price=price)
    exchange.status = 200
    exchange.upstream_name = "ollama"
    exchange.tap.feed(FINAL)
    ledger = Ledger()
    ledger.take(Recorded(log, "first"))
    ledger.take(Recorded(log, "second"))
    request = make_mocked_request("POST", "/api/chat")
    settle(request, CHAT, _state(records), ledger, exchange)
    settle(request, CHAT, _state(records), ledger, exchange)  # (a second settle: no takes)
    assert [name for name, _ in log] == ["second", "first"]  # the last first, once
    outcome = log[0][1]
    assert outcome.sent and outcome.tokens == 12 and not outcome.by_record
    assert outcome.cost == price.cost(7, 5, 0) > 0
    record = records.records[0]
    assert type(record) is UsageRecord
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (200, 7, 5)
    assert record.cost == outcome.cost and not record.estimated


def test_a_take_decided_while_postgresql_was_away_makes_a_local_record() -> None:
    records = Records()
    exchange = _exchange()
    exchange.status = 200
    exchange.tap.feed(FINAL)
    ledger = Ledger()
    state = _state(records)
    ledger.take(AdmissionHold(state.limiter, 7, by_record=True))
    settle(make_mocked_request("POST", "/api/chat"), CHAT, state, ledger, exchange)
    assert type(records.records[0]) is LocalUsageRecord


# --- the ledger ---------------------------------------------------------------------------


def test_the_ledger_gives_back_the_last_first_once_and_past_a_failing_release() -> None:
    log: list[tuple[str, Outcome]] = []

    class Failing(Recorded):
        def release(self, outcome: Outcome) -> None:
            raise RuntimeError("cannot")

    ledger = Ledger()
    ledger.take(Recorded(log, "a"))
    ledger.take(Failing(log, "b"))
    ledger.take(Recorded(log, "c"))
    ledger.unwind(Outcome(True, 1, 2, 3.0))
    ledger.unwind(Outcome(True, 1, 2, 3.0))
    assert [name for name, _ in log] == ["c", "a"] and len(ledger) == 0


def test_a_budget_reserved_here_while_budgets_are_shared_is_by_record() -> None:
    local = Budgets("USD")
    assert not BudgetHold(local, None, (), 5, False).by_record
    assert BudgetHold(local, mock.Mock(), (), 5, False).by_record
    assert not BudgetHold(local, mock.Mock(), (), 5, True).by_record


# --- the dialect ----------------------------------------------------------------------


async def test_each_relayed_route_says_its_dialect_once_for_every_error() -> None:
    """The middleware's error shape and the relay's cut streams read the same dialect:
    the route's, carried by its handler."""
    app = web.Application()
    for route in RELAY_ROUTES:
        assert getattr(relay_handler(route, app), DIALECT) == route.dialect
