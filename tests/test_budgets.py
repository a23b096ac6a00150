"""Budgets: exact under concurrency, charged from real SDK streams, refused in each
dialect as its SDK understands, rolled over with the calendar, reloaded at start."""

from __future__ import annotations

import asyncio
import calendar
import logging

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.budgets import Budgets, period_end, period_start
from aigateway.db.store import Store
from aigateway.http.appkeys import KEY_TABLE
from aigateway.records import Budget, BudgetError, BudgetLine, Price, check_budget, money
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key
from .helpers import eventually
from .test_instances import cli

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'
PRICE = 10_000  # micro-units per request (0.01 USD)


def _t(*ymdhms: int) -> float:
    return float(calendar.timegm((*ymdhms, 0, 0, 0)[:6]))


def test_periods_begin_at_midnight_utc() -> None:
    now = _t(2026, 12, 31, 23, 59, 59)  # a Thursday
    assert period_start("total", now) == 0 and period_end("total", now) is None
    assert period_start("daily", now) == _t(2026, 12, 31)
    assert period_end("daily", now) == _t(2027, 1, 1)
    assert period_start("weekly", now) == _t(2026, 12, 28)  # the Monday before
    assert period_end("weekly", now) == _t(2027, 1, 4)
    assert period_start("monthly", now) == _t(2026, 12, 1)
    assert period_end("monthly", now) == _t(2027, 1, 1)
    monday = _t(2026, 11, 30)
    assert period_start("weekly", monday) == monday  # a Monday at 00:00 starts its week
    assert period_start("weekly", monday - 1) == _t(2026, 11, 23)
    assert period_end("monthly", _t(2028, 2, 10)) == _t(2028, 3, 1)


def test_bad_budgets_are_refused() -> None:
    for amount, period, alert in (
        (-1, "monthly", None),
        (1.5, "monthly", None),
        (True, "monthly", None),
        (10**16, "monthly", None),
        (1, "yearly", None),
        (1, "daily", 0),
        (1, "daily", 101),
        (1, "daily", 50.5),
    ):
        with pytest.raises(BudgetError):
            check_budget(amount, period, alert)
    assert check_budget(0, "total") == Budget(0, "total")


def test_the_period_rolls_over_with_the_clock_and_the_alert_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A controlled clock: spend in one day, the next day starts at 0; the alert at 80%
    is logged once a day, however many requests pass it. (Spend in nano-units, budgets and
    what is shown in micro-units.)"""
    budgets = Budgets("USD")
    line = BudgetLine("user:1", "user 'acme'", Budget(100, "daily", 80))
    late = _t(2026, 12, 1, 23, 59, 58)
    caplog.set_level(logging.WARNING, "aigateway.budgets")
    for n in range(10):
        assert budgets.reserve((line,), 10_000, 10_000, late + n * 0.1) is None
        budgets.settle((line,), 10_000, 10_000, late + n * 0.1)
    refused = budgets.reserve((line,), 10_000, 10_000, late + 1)
    assert refused is not None and refused.retry_after == 1
    assert "has spent 0.000100 USD of its daily budget of 0.000100 USD" in refused.message
    assert "resets at 2026-12-02T00:00:00Z" in refused.message
    alerts = [r for r in caplog.records if "budget alert" in r.getMessage()]
    assert len(alerts) == 1 and "user 'acme' has spent 0.000080" in alerts[0].getMessage()
    # Midnight UTC: a new day, the whole budget again, and the alert may be said again.
    tomorrow = _t(2026, 12, 2, 0, 0, 1)
    assert budgets.reserve((line,), 10_000, 10_000, tomorrow) is None
    assert budgets.view(line, tomorrow)["spent"] == 0
    assert budgets.view(line, tomorrow)["reserved"] == 10
    for _ in range(8):
        budgets.settle((line,), 10_000, 10_000, tomorrow)
        budgets.reserve((line,), 10_000, 10_000, tomorrow)
    alerts = [r for r in caplog.records if "budget alert" in r.getMessage()]
    assert len(alerts) == 2
    # Without a per-request price, a request passes while anything is left: one may go
    # past the budget (its tokens are known only at its end), the next may not.
    tokens = BudgetLine("key:2", "key 'acme/x'", Budget(5, "total"))
    assert budgets.reserve((tokens,), 0, 0, tomorrow) is None
    budgets.settle((tokens,), 0, 7_000, tomorrow)
    refused = budgets.reserve((tokens,), 0, 0, tomorrow)
    assert refused is not None and refused.retry_after is None
    assert "does not reset" in refused.message


async def _gateway_with_budget(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    budget: Budget,
    price: Price,
) -> tuple[TestServer, str]:
    secret = await make_key(db_path, "acme", "laptop")
    store = await Store.open(db_path)
    try:
        await store.set_user_budget("acme", budget)
        await store.set_price(price)
    finally:
        await store.close()
    return await aiohttp_server(create_app(settings)), secret


async def test_simultaneous_requests_against_a_budget_of_fifty_relay_exactly_fifty(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
) -> None:
    gateway, key = await _gateway_with_budget(
        aiohttp_server, settings, db_path, Budget(50 * PRICE, "monthly"), Price("llama3*", PRICE)
    )
    url = str(gateway.make_url("/api/chat"))
    headers = {"Authorization": f"Bearer {key}"}
    async with ClientSession() as session:

        async def one() -> int:
            async with session.post(url, data=CHAT, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(100)))
        assert sorted(statuses) == [200] * 50 + [402] * 50
        assert len([r for r in fake.requests if r.path_qs == "/api/chat"]) == 50
        # Refused in Ollama's shape, saying which budget, what was spent, when it resets.
        async with session.post(url, data=CHAT, headers=headers) as resp:
            assert resp.status == 402
            error = (await resp.json())["error"]
            assert error.startswith("budget exhausted: user 'acme' has spent 0.500000 USD")
            assert "monthly budget of 0.500000 USD" in error and "resets at" in error
            assert int(resp.headers["Retry-After"]) > 0
            assert resp.headers["x-should-retry"] == "false"
        # A model without a price costs nothing, so the budget does not hold it back.
        free = CHAT.replace(b"llama3.2", b"qwen3")
        async with session.post(url, data=free, headers=headers) as resp:
            assert resp.status == 200
    assert await gateway.app[RELAY].usage.flush()
    made = cli("--check-budget", "acme", "--format", "json", "--db", db_path)
    assert made.returncode == 0, made.stderr
    assert '"spent": 500000' in made.stdout and '"exhausted": true' in made.stdout
    await gateway.close()

    # A gateway started again reloads what was spent from the usage records.
    again = await aiohttp_server(create_app(settings))
    async with (
        ClientSession() as session,
        session.post(str(again.make_url("/api/chat")), data=CHAT, headers=headers) as resp,
    ):
        assert resp.status == 402


async def test_token_costs_from_sdk_streams_are_charged_and_the_next_request_refused(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
) -> None:
    """Per output token, with the official SDKs streaming (OpenAI with and without
    include_usage): each key's first request passes with the whole budget left, its cost
    is charged when it ends, and the second is refused as each SDK understands it,
    without retrying."""
    per_token = Price("llama3*", per_million_input=1_000_000, per_million_output=2_000_000)
    gateway = await aiohttp_server(create_app(settings))
    store = await Store.open(db_path)
    keys = {}
    for sdk_name in ("ollama", "openai", "openai_usage", "anthropic"):
        keys[sdk_name] = await make_key(db_path, "tokens", sdk_name)
        record = await store.find_active_key("tokens", sdk_name)
        await store.set_key_budget(record.id, Budget(1, "daily"))
    await store.set_price(per_token)
    table = gateway.app[KEY_TABLE]
    await eventually(lambda: table.prices.for_model("llama3.2") == per_token)
    host = str(gateway.make_url("")).rstrip("/")
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async def count2(request: httpx2.Request) -> None:
        sent.append(request.url.path)

    messages = [{"role": "user", "content": "hi"}]
    try:
        native = ollama.AsyncClient(
            host=host, headers={"Authorization": f"Bearer {keys['ollama']}"}
        )
        async for _ in await native.chat(model="llama3.2", messages=messages, stream=True):
            pass
        with pytest.raises(ollama.ResponseError) as refused:
            await native.chat(model="llama3.2", messages=messages)
        assert refused.value.status_code == 402
        assert "budget exhausted: key 'tokens/ollama'" in refused.value.error
        await native._client.aclose()

        for name, options in (("openai", None), ("openai_usage", {"include_usage": True})):
            http = httpx.AsyncClient(event_hooks={"request": [count]})
            # (typed for httpx2, the SDK also takes an httpx client)
            sdk = openai.AsyncOpenAI(
                base_url=host + "/v1",
                api_key=keys[name],
                http_client=http,  # type: ignore[arg-type]
            )
            stream = await sdk.chat.completions.create(
                model="llama3.2",
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options=options,  # type: ignore[arg-type]
            )
            assert isinstance(stream, openai.AsyncStream)  # (stream=True)
            async for _ in stream:
                pass
            sent.clear()
            with pytest.raises(openai.RateLimitError) as quota:
                await sdk.chat.completions.create(model="llama3.2", messages=messages)  # type: ignore[arg-type]
            assert quota.value.code == "insufficient_quota"
            assert quota.value.type == "insufficient_quota"
            assert "budget exhausted" in quota.value.message
            assert len(sent) == 1  # the SDK (max_retries 2) did not retry
            await sdk.close()

        # (this SDK carries its own fork of httpx)
        counted = httpx2.AsyncClient(event_hooks={"request": [count2]})
        claude = anthropic.AsyncAnthropic(
            base_url=host, api_key=keys["anthropic"], http_client=counted
        )
        async with claude.messages.stream(
            model="llama3.2",
            max_tokens=64,
            messages=messages,  # type: ignore[arg-type]
        ) as message_stream:
            async for _ in message_stream:
                pass
        sent.clear()
        with pytest.raises(anthropic.PaymentRequiredError) as billing:
            await claude.messages.create(model="llama3.2", max_tokens=64, messages=messages)  # type: ignore[arg-type]
        assert billing.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
        assert len(sent) == 1
        await claude.close()
    finally:
        written = await gateway.app[RELAY].usage.flush()
    assert written  # (after the finally: an error above is not hidden by this one)
    # What each key spent is what its usage record costs, to the micro-unit, by hand.
    rows = [r for r in await store.usage_rows() if r.status == 200]
    assert len(rows) == 4
    now = rows[-1].ts
    budgets = gateway.app[RELAY].budgets
    for row in rows:
        assert row.prompt_tokens and row.completion_tokens
        by_hand = row.prompt_tokens * 1 + row.completion_tokens * 2
        assert row.cost == by_hand
        record = await store.get_key(row.key_id)
        assert budgets.view(record.budgets[0], now)["spent"] == by_hand
        assert await store.spend_since(f"key:{row.key_id}", 0) == by_hand * 1000  # nano
    await store.close()


async def test_budgets_through_the_admin_api(
    admin: TestClient[Request, None],
    client: TestClient[Request, None],
    gateway: TestServer,
) -> None:
    resp = await admin.patch(
        "/admin/users/alice",
        json={"budget": {"amount": 3 * PRICE, "period": "weekly", "alert_percent": 50}},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["budget"] == {
        "amount": 3 * PRICE,
        "period": "weekly",
        "alert_percent": 50,
    }
    for bad in (
        {"amount": -1},
        {"amount": 1, "period": "hourly"},
        {"amount": 1, "alert_percent": 0},
        {"amount": "1"},
        {"amount": 1, "currency": "EUR"},
        [1],
    ):
        assert (await admin.patch("/admin/users/alice", json={"budget": bad})).status == 400, bad
    prices = {"pattern": "*", "per_request": PRICE}
    assert (await admin.post("/admin/prices", json=prices)).status == 200
    assert (await client.post("/api/chat", data=CHAT)).status == 200
    # A price change mid-period: what was spent keeps its cost, the next pays the new.
    prices["per_request"] = 2 * PRICE
    assert (await admin.post("/admin/prices", json=prices)).status == 200
    assert (await client.post("/api/chat", data=CHAT)).status == 200
    over = await client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []})
    assert over.status == 429
    assert (await over.json())["error"]["type"] == "insufficient_quota"
    over = await client.post(
        "/v1/messages", json={"model": "llama3.2", "max_tokens": 1, "messages": []}
    )
    assert over.status == 402
    assert (await over.json())["error"]["type"] == "billing_error"
    me = await (await client.get("/admin/me")).json()
    assert me["currency"] == "USD"
    (mine,) = me["budgets"]
    assert mine["owner"] == "user" and mine["spent"] == 3 * PRICE and mine["exhausted"]
    assert await gateway.app[RELAY].usage.flush()
    report = await (await admin.get("/admin/users/alice/budget")).json()
    assert report["budget"]["spent"] == 3 * PRICE and report["budget"]["remaining"] == 0
    assert report["keys"][0]["spent"] == 3 * PRICE
    # Removing the budget lets the user spend again at once.
    assert (await admin.patch("/admin/users/alice", json={"budget": None})).status == 200
    assert (await client.post("/api/chat", data=CHAT)).status == 200
    assert (await client.get("/admin/users/alice/budget")).status == 403
    assert (await admin.get("/admin/users/nobody/budget")).status == 404
    assert money(PRICE) == "0.010000"


async def test_an_invoice_per_user_and_period(
    admin: TestClient[Request, None],
    client: TestClient[Request, None],
    gateway: TestServer,
    db_path: str,
) -> None:
    """Per model, the user's requests, tokens and cost in the period, and the total, the
    same from the CLI (CSV with a TOTAL row) and the admin API (micro-units)."""
    price = {"pattern": "llama3*", "per_request": PRICE, "per_million_output": 1_000_000}
    assert (await admin.post("/admin/prices", json=price)).status == 200
    for model in ("llama3.2", "llama3.2", "qwen3"):
        body = CHAT.replace(b"llama3.2", model.encode())
        assert (await client.post("/api/chat", data=body)).status == 200
    assert await gateway.app[RELAY].usage.flush()
    document = await (await admin.get("/admin/users/alice/invoice")).json()
    lines = {line["model"]: line for line in document["lines"]}  # (by their one identity)
    llama = lines["llama3.2:latest"]
    assert llama["requests"] == 2 and lines["qwen3:latest"]["cost"] == 0
    per_request = PRICE + llama["completion_tokens"] // 2  # 1 per output token
    assert llama["cost"] == 2 * per_request
    assert document["total"]["cost"] == 2 * per_request and document["total"]["requests"] == 3
    assert document["currency"] == "USD" and document["user"] == "alice"
    # Another period has nothing; the root's own admin requests are not alice's.
    empty = await (await admin.get("/admin/users/alice/invoice?since=0&until=86400")).json()
    assert empty["lines"] == [] and empty["total"]["cost"] == 0
    for bad in ("since=nan", "until=inf", "since=-1", "since=10&until=5", "until=x"):
        assert (await admin.get(f"/admin/users/alice/invoice?{bad}")).status == 400, bad
    assert (await client.get("/admin/users/alice/invoice")).status == 403
    made = cli("--invoice", "alice", "--format", "csv", "--db", db_path)
    assert made.returncode == 0, made.stderr
    rows = made.stdout.strip().splitlines()
    assert rows[0] == "model,requests,prompt_tokens,completion_tokens,cost"
    assert rows[-1].startswith("TOTAL,3,") and rows[-1].endswith(f",{money(2 * per_request)}")
    table = cli("--invoice", "alice", "--since", "2026-01-01", "--db", db_path).stdout
    assert table.startswith("Invoice for alice, from 2026-01-01T00:00:00Z until now, in USD")
    assert cli("--invoice", "nobody", "--db", db_path).returncode == 1
