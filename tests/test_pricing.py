"""Prices and the cost of every request, to the nano-unit, from a hand calculation."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import ollama
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import AppKey, Request
from pytest_aiohttp import AiohttpClient

from aigateway.access.pricing import PriceList
from aigateway.db.store import Store
from aigateway.records import (
    MAX_COST_NANO,
    MICRO,
    InvalidInputError,
    ModelInfo,
    Price,
    PriceError,
    micro,
    money,
    parse_money,
)

from .conftest import make_key
from .helpers import eventually
from .test_instances import cli

if TYPE_CHECKING:
    from aigateway.access.keytable import KeyTable
    from aigateway.relay.state import RelayState

# chat-nonstream.json (what the fake Ollama answers a non-streamed /api/chat with):
PROMPT, OUTPUT, TOTAL_NS = 26, 6, 4883583458


def _nano_by_hand(price: Price, prompt: int, output: int, ns: int) -> int:
    """The cost in exact fractions of a micro-unit, in nano-units rounded up once (at most
    MAX_COST_NANO): what the gateway must match."""
    exact = (
        Fraction(price.per_request)
        + Fraction(prompt * price.per_million_input, 10**6)
        + Fraction(output * price.per_million_output, 10**6)
        + Fraction(ns * price.per_second, 10**9)
    )
    nano = exact * 1000
    whole = int(nano) + (1 if nano.denominator != 1 else 0)  # ceiling
    return min(whole, MAX_COST_NANO)


def _by_hand(price: Price, prompt: int, output: int, ns: int) -> int:
    """One request's cost as shown: micro-units, rounded half up from its nano-units."""
    return micro(_nano_by_hand(price, prompt, output, ns))


def test_costs_are_whole_nano_units_rounded_up_once() -> None:
    price = Price("llama3*", 1000, 100_000, 400_000, 500)
    nano = price.cost(PROMPT, OUTPUT, TOTAL_NS)
    assert nano == _nano_by_hand(price, PROMPT, OUTPUT, TOTAL_NS) == 3_446_792  # 3446791.729
    assert micro(nano) == 3447
    assert Price("x", per_million_output=1).cost(0, 499_999, 0) == 500  # 0.499999 micro
    assert Price("x", per_million_output=1).cost(0, 1, 0) == 1  # 10^-6 nano: used, so 1
    assert Price("x", per_million_output=1).cost(0, 0, 0) == 0  # nothing used, nothing paid
    assert micro(499) == 0 and micro(500) == 1  # shown: half up, once
    # Saturated at the maximum, never past what a database integer holds.
    huge = Price("x", 10**15, 10**15, 10**15, 10**15)
    assert huge.cost(2**40, 2**40, 2**60) == _nano_by_hand(huge, 2**40, 2**40, 2**60)
    assert huge.cost(2**40, 2**40, 2**60) == MAX_COST_NANO
    # The reservation: per request, prompt and output at the token prices, time reserved.
    assert price.reserve(100, 2048, 60) == _nano_by_hand(price, 100, 2048, 60 * 10**9)


def test_amounts_are_read_exactly_and_refused_clearly() -> None:
    assert parse_money("0.15", "x") == 150_000
    assert parse_money("2", "x") == 2 * MICRO
    assert parse_money(" 0.000001 ", "x") == 1
    assert money(3447) == "0.003447" and money(12 * MICRO + 5) == "12.000005"
    for bad in ("0.0000001", "-1", "nan", "inf", "1e400", "abc", ""):
        with pytest.raises(PriceError):
            parse_money(bad, "--per-request")


def test_the_most_specific_price_wins() -> None:
    prices = PriceList(
        [
            Price("*", per_request=1),
            Price("llama3*", per_request=2),
            Price("llama3.2*", per_request=3),
            Price("llama3.2:1b", per_request=4),
        ]
    )
    assert prices.for_model("llama3.2:1b").per_request == 4  # type: ignore[union-attr]
    assert prices.for_model("llama3.2").per_request == 3  # type: ignore[union-attr]
    assert prices.for_model("llama3.1:8b").per_request == 2  # type: ignore[union-attr]
    assert prices.for_model("qwen2.5:0.5b").per_request == 1  # type: ignore[union-attr]
    assert prices.for_model(None) is None  # no model named: free
    assert PriceList([Price("llama3", per_request=5)]).for_model("llama3:latest") is not None
    assert PriceList([Price("llama3*", per_request=5)]).for_model("qwen3") is None  # free


async def test_bad_prices_are_refused(database: str) -> None:
    store = await Store.open(database)
    try:
        for bad in (Price(""), Price("two words"), Price("x", per_request=-1)):
            with pytest.raises(InvalidInputError):
                await store.set_price(bad)
        await store.set_price(Price("llama3*", 1, 2, 3, 4))
        await store.set_price(Price("llama3*", 5))  # replaced, not added
        assert await store.list_prices() == [Price("llama3*", 5)]
        await store.remove_price("llama3*")
        assert await store.list_prices() == []
    finally:
        await store.close()


async def test_every_request_carries_its_cost_by_the_price_when_it_started(
    gateway: TestServer, key: str, db_path: str
) -> None:
    store = await Store.open(db_path)
    first = Price("llama3*", 1000, 100_000, 400_000, 500)
    await store.set_price(first)
    table = gateway.app[_key_table()]
    await eventually(lambda: table.prices.for_model("llama3.2") == first)
    headers = {"Authorization": f"Bearer {key}"}
    host = str(gateway.make_url("")).rstrip("/")
    client = ollama.AsyncClient(host=host, headers=headers)
    try:
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        # A price change: what was recorded keeps its cost, the next request pays the new.
        second = Price("llama3*", 2000, 100_000, 400_000, 0)
        await store.set_price(second)
        await eventually(lambda: table.prices.for_model("llama3.2") == second)
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        # OpenAI's dialect, streamed without include_usage: counted, so priced.
        sdk = openai.AsyncOpenAI(base_url=host + "/v1", api_key=key)
        stream = await sdk.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            pass
        await sdk.close()
        # A model no price matches is free; a request Ollama refuses costs nothing.
        await client.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(ollama.ResponseError):
            await client.chat(model="llama9", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client._client.aclose()

    assert await gateway.app[_relay()].usage.flush()
    rows = await store.usage_rows()
    await store.close()
    costs = [(r.model, r.status, r.cost, r.model_ns) for r in rows]
    # The CLI's report adds them up per model, as amounts of CURRENCY.
    report = cli("--usage", "--by", "model", "--format", "csv", "--db", db_path).stdout
    llama = next(line for line in report.splitlines() if line.startswith("llama3.2:latest,"))
    # (the sum of the records' nano-units, rounded once: not the sum of rounded costs)
    nano = (
        _nano_by_hand(first, PROMPT, OUTPUT, TOTAL_NS)
        + _nano_by_hand(second, PROMPT, OUTPUT, 0)
        + _nano_by_hand(second, 26, 2, 0)
    )
    assert llama.endswith(f",{money(micro(nano))},USD")
    assert costs == [  # (each model by its one identity)
        ("llama3.2:latest", 200, _by_hand(first, PROMPT, OUTPUT, TOTAL_NS), TOTAL_NS),
        ("llama3.2:latest", 200, _by_hand(second, PROMPT, OUTPUT, 0), None),
        ("llama3.2:latest", 200, _by_hand(second, 26, 2, 0), None),
        ("qwen3:latest", 200, 0, None),
        ("llama9:latest", 404, 0, None),
    ]


def _key_table() -> AppKey[KeyTable]:
    from aigateway.http.appkeys import KEY_TABLE

    return KEY_TABLE


def _relay() -> AppKey[RelayState]:
    from aigateway.relay.state import RELAY

    return RELAY


async def test_prices_through_the_admin_api(
    admin: TestClient[Request, None], client: TestClient[Request, None]
) -> None:
    resp = await admin.post(
        "/admin/prices", json={"pattern": "hf.co/acme/llama3*", "per_million_output": 400_000}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["per_million_output"] == 400_000
    listed = await (await admin.get("/admin/prices")).json()
    assert listed["currency"] == "USD"
    assert [p["pattern"] for p in listed["prices"]] == ["hf.co/acme/llama3*"]
    for bad in (
        {"pattern": "x", "per_request": 1.5},
        {"pattern": "x", "per_request": -1},
        {"pattern": "x", "per_request": True},
        {"pattern": "", "per_request": 1},
        {"pattern": 7},
        {"per_request": 1},
        {"pattern": "x", "per_token": 1},
    ):
        assert (await admin.post("/admin/prices", json=bad)).status == 400, bad
    assert (await admin.delete("/admin/prices?pattern=nope")).status == 404
    assert (await admin.delete("/admin/prices")).status == 400
    resp = await admin.delete("/admin/prices", params={"pattern": "hf.co/acme/llama3*"})
    assert resp.status == 200
    assert (await (await admin.get("/admin/prices")).json())["prices"] == []
    assert (await client.get("/admin/prices")).status == 403


async def test_any_key_sees_the_models_it_may_use_with_their_prices(
    gateway: TestServer,
    admin: TestClient[Request, None],
    db_path: str,
    aiohttp_client: AiohttpClient,
) -> None:
    held = await make_key(db_path, "bea", "tablet", models=["llama3*"])
    client: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {held}"}
    )
    await admin.post("/admin/prices", json={"pattern": "llama3*", "per_million_output": 400_000})
    seen = await (await client.get("/admin/models")).json()
    assert seen["currency"] == "USD"
    assert [m["name"] for m in seen["models"]] == ["llama3.2:latest"]
    (model,) = seen["models"]
    assert model["family"] == "llama" and model["price"]["per_million_output"] == 400_000
    assert model["context_length"] is None  # until sync-models
    store = await Store.open(db_path)
    await store.replace_models([ModelInfo("llama3.2:latest", context_length=131072)])
    await store.close()
    seen = await (await client.get("/admin/models")).json()
    assert seen["models"][0]["context_length"] == 131072
    everything = await (await admin.get("/admin/models")).json()
    names = {m["name"]: m for m in everything["models"]}
    assert "deepseek-r1:latest" in names and names["deepseek-r1:latest"]["price"] is None
