"""Nothing that ran on the GPU is free by accident (issue 24): a client that leaves before
a non-streamed answer, a prompt with bytes that are not UTF-8, a body whose model cannot
be read; and the request's ledger gives back every take, however the request ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.pricing import PriceList
from aigateway.db.store import Store
from aigateway.records import Budget, KeyLimits, Price, micro
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import upstreams_from_file
from aigateway.usage.journal import read_segment

from .conftest import make_key
from .test_policy import _usage

PRICE = Price("*", per_request=10_000, per_million_input=2_000_000)


async def _priced(db_path: str, price: Price = PRICE) -> None:
    store = await Store.open(db_path)
    try:
        await store.set_price(price)
    finally:
        await store.close()


async def test_a_client_that_leaves_before_a_non_streamed_answer_is_charged(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """On main: recorded as 502 and charged 0, although Ollama ran the prompt."""
    await _priced(db_path)
    key = await make_key(db_path)
    # (A test server cancels the handler of a client that left, as the server does.)
    gateway = await aiohttp_server(create_app(settings))
    body = b'{"model":"silent","stream":false,"prompt":"' + b"x" * 400 + b'"}'
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(
                gateway.make_url("/api/generate"),
                data=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=0.5),
            ):
                raise AssertionError("the fake's 'silent' model never answers in time")
        except TimeoutError:
            pass
    (record,) = await _usage(db_path, 1)
    estimate = len(body) // 4
    assert record.status == 499 and record.client_gone and record.estimated
    assert record.prompt_tokens == estimate and record.completion_tokens == 0
    assert record.cost == micro(PRICE.cost(estimate, 0, 0)) > micro(PRICE.cost(0, 0, 0)) > 0


async def test_invalid_utf8_in_a_prompt_is_read_as_go_reads_it_and_priced(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """On main, with ALLOW_CLOUD_MODELS=true: the body was "undecidable", relayed
    nameless, and free; Ollama reads the byte as U+FFFD and runs the model."""
    await _priced(db_path)
    key = await make_key(db_path)
    gateway = await aiohttp_server(create_app(replace(settings, allow_cloud_models=True)))
    async with aiohttp.ClientSession() as session:
        for body in (
            b'{"model":"llama3.2","stream":false,"prompt":"caf\xe9 \xff"}',
            b'{"model":"llama3.2","stream":false,"prompt":"\\ud800 alone"}',
        ):
            async with session.post(
                gateway.make_url("/api/generate"),
                data=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
    records = await _usage(db_path, 2)
    assert all(r.model is not None and "llama3.2" in r.model for r in records)
    assert all(r.cost is not None and r.cost >= micro(PRICE.cost(0, 0, 0)) > 0 for r in records)


async def test_a_body_whose_model_cannot_be_read_is_refused_whatever_the_cloud_setting(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """On main, with ALLOW_CLOUD_MODELS=true: relayed, nameless and free."""
    key = await make_key(db_path)
    gateway = await aiohttp_server(create_app(replace(settings, allow_cloud_models=True)))
    async with aiohttp.ClientSession() as session:
        for body in (b'{"model":"llama3.2"', b"[1]", b'{"model": 5}', b'{"model":"a"} x'):
            for path in ("/api/chat", "/v1/chat/completions", "/v1/messages"):
                async with session.post(
                    gateway.make_url(path), data=body, headers={"Authorization": f"Bearer {key}"}
                ) as resp:
                    assert resp.status == 400, (path, body)
                    assert "undecidable_body" in await resp.text()


async def test_every_take_is_given_back_whichever_way_the_request_ends(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """A key with a token quota, a limit of requests at once and a budget: requests that
    end well, are refused for their body, are refused by the budget after the quota
    reserved, and whose client leaves, leave nothing reserved or held behind. (On main
    a budget refusal after the token reservation left the reservation for the day.)"""
    await _priced(db_path, Price("*", per_request=10_000))
    limits = KeyLimits(tokens_per_day=10**6, max_concurrent=4)
    key = await make_key(db_path, "acme", "x", limits=limits, models=["llama3*", "silent"])
    await _budget_of_the_only_key(db_path, Budget(25_000, "monthly"))
    app = create_app(settings)
    gateway: TestServer = await aiohttp_server(app)  # (cancels the handler of a client that left)
    relay = app[RELAY]
    auth = {"Authorization": f"Bearer {key}"}
    chat = b'{"model":"llama3.2","stream":false,"messages":[]}'
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes, timeout: float = 10) -> int:
            async with session.post(
                gateway.make_url("/api/chat"),
                data=body,
                headers=auth,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                await resp.read()
                return resp.status

        assert await post(chat) == 200
        assert await post(b'{"model":"qwen3","messages":[]}') == 403  # not allowed
        with contextlib.suppress(TimeoutError):
            await post(b'{"model":"silent","stream":false}', timeout=0.3)
        assert await post(chat) == 402  # 10,000 + 10,000 + (the leave) 10,000 > 25,000
        await asyncio.sleep(0.2)
    record = relay.key_table.records()[0]
    use = relay.limiter.usage_of(record, 0)
    assert use["in_flight"] == 0 and use["tokens_reserved"] == 0
    assert relay.body_budget.held == 0
    (line,) = record.budgets
    assert relay.budgets.view(line, asyncio.get_running_loop().time())["reserved"] == 0


async def _budget_of_the_only_key(db_path: str, budget: Budget) -> None:
    store = await Store.open(db_path)
    try:
        (key,) = await store.list_keys()
        await store.set_key_budget(key.id, budget)
    finally:
        await store.close()


async def test_start_up_warns_of_a_cloud_model_no_price_matches(
    aiohttp_client: AiohttpClient,
    db_path: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _priced(db_path, Price("gpt-4o*", per_million_input=150_000))
    path = tmp_path / "upstreams.toml"
    path.write_text(
        '[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        'key_env = "OA_KEY"\nmodels = ["gpt-4o*", "o3*"]\n'
    )
    upstreams = upstreams_from_file(str(path), {"OA_KEY": "sk-x"})
    with caplog.at_level(logging.WARNING, "aigateway"):
        await aiohttp_client(create_app(Settings(token_db_path=db_path, upstreams=upstreams)))
    warned = [r.getMessage() for r in caplog.records if "no price matches" in r.getMessage()]
    assert len(warned) == 1 and "'o3*'" in warned[0] and "upstream oa" in warned[0]


# --- one model identity -------------------------------------------------------------------

# Spellings Ollama runs as llama3.2:latest (protocol/names.py; each class of issue 24).
SPELLINGS = (
    "llama3.2",
    "LLaMA3.2",
    " llama3.2\t",
    "\u00a0llama3.2\u3000",
    "llama3.2:local",
    "llama3.2:LATEST",
    "registry.ollama.ai/library/llama3.2:latest",
    "Registry.Ollama.AI/Library/Llama3.2",
    "library/llama3.2",
    "https://registry.ollama.ai/library/llama3.2",
    "http://REGISTRY.ollama.ai/library/llama3.2:latest:local",
)


def _priced_bodies(model: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """One request of `model` on every route that can be priced, in each dialect."""
    name = orjson.dumps(model).decode()
    json = {"Content-Type": "application/json"}
    form = {"Content-Type": "multipart/form-data; boundary=xyz"}
    chat = f'{{"model":{name},"stream":false,"messages":[{{"role":"user","content":"hi"}}]}}'
    return [
        ("/api/generate", f'{{"model":{name},"prompt":"hi","stream":false}}'.encode(), json),
        ("/api/chat", chat.encode(), json),
        ("/api/embed", f'{{"model":{name},"input":"hi"}}'.encode(), json),
        ("/api/embeddings", f'{{"model":{name},"prompt":"hi"}}'.encode(), json),
        ("/v1/chat/completions", chat.encode(), json),
        ("/v1/completions", f'{{"model":{name},"prompt":"hi"}}'.encode(), json),
        ("/v1/embeddings", f'{{"model":{name},"input":"hi"}}'.encode(), json),
        ("/v1/responses", f'{{"model":{name},"input":"hi"}}'.encode(), json),
        ("/v1/messages", f'{{"model":{name},"max_tokens":9,"messages":[]}}'.encode(), json),
        (
            "/v1/audio/transcriptions",
            b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            + model.encode()
            + b'\r\n--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
            b"\r\n\r\nRIFF\r\n--xyz--\r\n",
            form,
        ),
    ]


async def _each_spelling_on_each_route(
    gateway: TestServer, key: str
) -> list[tuple[str, str, int, str]]:
    """Every spelling on every priced route: (spelling, path, status, answer)."""
    answers = []
    async with aiohttp.ClientSession() as session:
        for spelling in SPELLINGS:
            for path, body, headers in _priced_bodies(spelling):
                async with session.post(
                    gateway.make_url(path),
                    data=body,
                    headers={"Authorization": f"Bearer {key}", **headers},
                ) as resp:
                    answers.append((spelling, path, resp.status, await resp.text()))
    return answers


async def test_every_spelling_of_a_priced_model_is_priced_and_held_to_its_budget(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
) -> None:
    """A key whose allow-list names llama3.2 and whose budget is spent: every spelling of
    llama3.2 on every priced route and dialect is the same model to the allow-list (not
    403), to the price and the budget (402; 429 insufficient_quota on OpenAI's routes).
    On 31b9ff2 the allow-list refused most spellings, and those it let by were free."""
    await _priced(db_path, Price("llama3.2", per_request=10_000))
    key = await make_key(db_path, "acme", "x", models=["llama3.2"])
    await _budget_of_the_only_key(db_path, Budget(0, "total"))
    gateway = await aiohttp_server(create_app(settings))
    for spelling, path, status, text in await _each_spelling_on_each_route(gateway, key):
        want = 429 if path.startswith("/v1/") and "messages" not in path else 402
        assert status == want and "over_budget" in text, (spelling, path, text)
    assert [r for r in fake.requests if r.method == "POST"] == []


async def test_each_spelling_is_recorded_as_sent_and_by_its_identity(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """Priced alike, recorded under one identity, the name as sent kept beside it; the
    transcription route priced like the others (on 31b9ff2 it was never priced)."""
    price = Price("llama3.2", per_request=10_000)
    await _priced(db_path, price)
    key = await make_key(db_path)
    gateway = await aiohttp_server(create_app(settings))
    sent = []
    for spelling, path, status, text in await _each_spelling_on_each_route(gateway, key):
        assert status == 200, (spelling, path, text)
        sent.append((path, spelling))
    records = await _usage(db_path, len(sent))
    got = sorted((r.route, r.model_sent or "") for r in records)
    assert got == sorted((p.removeprefix("/api").removeprefix("/v1"), s) for p, s in sent)
    assert {r.model for r in records} == {"llama3.2:latest"}
    assert all(r.cost == micro(price.cost(0, 0, 0)) for r in records)  # (shown in micro)


@pytest.mark.parametrize(
    ("path", "model", "status", "message"),
    [
        ("/api/chat", "   ", 400, "model is required"),
        ("/api/generate", "", 404, "model '' not found"),
        ("/api/chat", "llama3.2:cloud:local", 400, "use either :local or :cloud, not both"),
        ("/api/chat", "llama3.2@sha256:00", 400, "invalid model name"),
        ("/api/chat", "l\u00e1ma", 400, "invalid model name"),
        ("/api/embed", "a/b/c/d:e", 400, "invalid model name"),
        ("/api/show", "x:", 400, "invalid model name"),
        ("/v1/chat/completions", "-bad", 400, "invalid model name"),
        ("/v1/messages", "a" * 81, 400, "invalid model name"),
    ],
)
async def test_a_name_ollama_refuses_is_refused_with_its_answer_and_never_relayed(
    client: TestClient[Request, None],
    fake: FakeOllama,
    path: str,
    model: str,
    status: int,
    message: str,
) -> None:
    body = {"model": model, "prompt": "hi", "messages": [], "max_tokens": 9}
    resp = await client.post(path, data=orjson.dumps(body))
    assert resp.status == status
    document = await resp.json()
    error = document["error"]
    text = error if isinstance(error, str) else error["message"]
    assert text.startswith(message), text
    assert [r for r in fake.requests if r.method == "POST"] == []


async def test_model_labels_in_metrics_stay_few_whatever_names_clients_send(
    aiohttp_server: AiohttpServer,
    db_path: str,
    upstream: TestServer,
) -> None:
    """One Ollama, no health checks: 3,000 spellings of one model and 3,000 names no
    upstream has (which this fake Ollama answers 200) make at most the models it
    serves plus `other` as labels. On 31b9ff2: 6,000 labels."""
    settings = Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"),
        token_db_path=db_path,
        metrics="on",
    )
    key = await make_key(db_path)
    gateway = await aiohttp_server(create_app(settings))
    case_variants = [
        "".join(c.upper() if bits >> i & 1 else c for i, c in enumerate("llama"))
        for bits in range(32)
    ]
    spellings = [
        f"{space}{prefix}{name}3.2{suffix}{space}"
        for name in case_variants
        for prefix in (
            "",
            "library/",
            "Registry.Ollama.AI/library/",
            "https://REGISTRY.ollama.ai/library/",
        )
        for suffix in ("", ":latest", ":LATEST", ":local", ":latest:local")
        for space in ("", " ", "\t", "\u00a0", "\n")
    ][:3000]
    assert len(set(spellings)) == 3000
    names = spellings + [f"made-up-{n}" for n in range(3000)]
    async with aiohttp.ClientSession() as session:

        async def one(model: str) -> None:
            body = orjson.dumps({"model": model, "input": "hi"})
            async with session.post(
                gateway.make_url("/api/embed"),
                data=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

        for start in range(0, len(names), 200):
            await asyncio.gather(*(one(m) for m in names[start : start + 200]))
        async with session.get(gateway.make_url("/metrics")) as resp:
            page = await resp.text()
    labels = {
        sample.labels["model"]
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if "model" in sample.labels
    }
    assert labels <= {"llama3.2:latest", "qwen3:8b", "other"}, labels
    assert "llama3.2:latest" in labels


def test_a_journal_line_of_the_release_before_nano_units_is_read_in_nano_units(
    tmp_path: Path,
) -> None:
    """Records journaled by the release before (micro-unit costs, 18 fields) and replayed
    after the upgrade keep their worth."""
    old = [1.0, 1, "alice", "laptop", "POST", "/chat", "llama3.2", 200, 5, 6, 9.0, 1.0]
    old += [10, 20, False, False, 1234, None]
    new = [*old[:16], 1234, None, "Llama3.2"]
    segment = tmp_path / "seg.jsonl"
    segment.write_bytes(orjson.dumps(old) + b"\n" + orjson.dumps(new) + b"\n")
    before, after = read_segment(segment)
    assert (before.cost, after.cost) == (1_234_000, 1234)
    assert (before.model_sent, after.model_sent) == (None, "Llama3.2")


async def test_model_management_reads_each_field_as_ollama_does(
    admin: TestClient[Request, None], fake: FakeOllama
) -> None:
    """copy's names and create's new name are read by model.ParseName alone (no trimming,
    no :local suffix); create's base model (`from`) as a model to run."""
    resp = await admin.post("/api/copy", json={"source": "llama3.2", "destination": " x"})
    assert resp.status == 400 and (await resp.json())["error"] == 'destination " x" is invalid'
    resp = await admin.post("/api/copy", json={"source": "a@b", "destination": "x"})
    assert (await resp.json())["error"] == 'source "a@b" is invalid'
    resp = await admin.post("/api/create", json={"model": " mine", "from": "llama3.2"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid model name"
    assert [r for r in fake.requests if r.method == "POST"] == []
    resp = await admin.post("/api/create", json={"model": "mine", "from": " llama3.2:local "})
    assert resp.status == 200, await resp.text()


def test_a_catch_all_price_covers_cloud_models_too() -> None:
    """Prices matched as allow-lists do, where `*` never reaches a cloud model: on
    31b9ff2 a '*' price left every Ollama cloud model free (and past every budget)."""
    prices = PriceList([Price("*", per_request=10_000), Price("llama3*", per_request=5)])
    for cloud in ("gpt-oss:120b-cloud", "GLM-4.6:Cloud", "gpt-oss:20b:cloud"):
        found = prices.for_model(cloud)
        assert found is not None and found.pattern == "*", cloud
    found = prices.for_model("Llama3.2")
    assert found is not None and found.pattern == "llama3*"


async def test_an_answer_without_counts_is_charged_its_prompt_as_estimated(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    """Ollama's /api/embeddings reports no token counts: on 31b9ff2 a token price
    charged it nothing however large its prompt."""
    await _priced(db_path, Price("*", per_million_input=1_000_000))
    key = await make_key(db_path)
    gateway = await aiohttp_server(create_app(settings))
    body = orjson.dumps({"model": "all-minilm", "prompt": "x" * 40_000})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.make_url("/api/embeddings"),
            data=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        assert resp.status == 200
        assert "prompt_eval_count" not in await resp.text()
    (record,) = await _usage(db_path, 1)
    assert record.estimated and record.prompt_tokens == len(body) // 4
    assert record.cost == micro(Price("*", per_million_input=1_000_000).cost(len(body) // 4, 0, 0))
