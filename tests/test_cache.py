"""The response cache (issue 29, CACHE_SIZE): answers kept per user by route, the model's
identity and digest and the exact body; a hit the same bytes (a stream replayed), never
at the upstream, recorded `cached`, priced by CACHE_HIT_PRICE and counted by the limits;
only complete 200s kept; bounded in bytes (least recently used out first) and in time."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import ollama
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.protocol.body import fixed_sampling
from aigateway.records import KeyLimits, LocalUsageRecord, Price, UsageRecord
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama, fixture
from aigateway.upstreams.cache import CHUNK_OVERHEAD, ENTRY_OVERHEAD, Keeper, ResponseCache
from aigateway.usage.journal import Journal, read_segment

from .conftest import make_key
from .helpers import at_revision, eventually, old_usage_record
from .test_policy import _usage

GatewayClient = TestClient[Request, None]

EMBED = b'{"model":"llama3.2","input":["the same chunk","again"]}'
CHAT = (
    b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],'
    b'"options":{"temperature":0,"seed":42}}'
)
HEADER = "X-Aigateway-Cache"


@pytest.fixture
def settings(upstream: TestServer, db_path: str) -> Settings:
    return Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"),
        token_db_path=db_path,
        cache_bytes=1024**2,
        cache_routes=("/api/embed", "/api/embeddings", "/v1/embeddings", "/api/chat",
                      "/api/generate", "/v1/chat/completions"),
        metrics="on",
    )  # fmt: skip


async def _listed(gateway: TestServer) -> None:
    """Once the gateway read its upstream's list (in the background, at start): the
    digests the cache keys answers by."""
    pool = gateway.app[RELAY].pool
    await eventually(lambda: pool.digest_of("llama3.2:latest") is not None)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, gateway: TestServer, key: str) -> GatewayClient:
    await _listed(gateway)
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {key}"})


def _at_upstream(fake: FakeOllama, path: str) -> int:
    return sum(1 for r in fake.requests if r.path_qs == path)


async def _twice(
    client: GatewayClient, path: str, body: bytes, large: bool = False
) -> tuple[bytes, bytes]:
    """The answers to `body` asked twice: the first looked for and kept, the second kept."""
    first = await client.post(path, data=io.BytesIO(body) if large else body)
    assert first.status == 200, await first.text()
    assert first.headers[HEADER] == "miss"
    once = await first.read()
    second = await client.post(path, data=io.BytesIO(body) if large else body)
    assert second.status == 200
    assert second.headers[HEADER] == "hit"
    return once, await second.read()


async def test_an_embedding_asked_again_is_the_same_bytes_from_the_cache(
    client: GatewayClient, fake: FakeOllama, db_path: str
) -> None:
    once, again = await _twice(client, "/api/embed", EMBED)
    assert again == once
    assert _at_upstream(fake, "/api/embed") == 1  # the hit never reached the upstream
    first, second = await _usage(db_path, 2)
    assert (first.cached, second.cached) == (False, True)
    # Counted like the answer it repeats (its counts are in the bytes).
    assert second.prompt_tokens == first.prompt_tokens is not None
    assert second.status == 200 and second.model == first.model
    # One byte more is another body: asked of the upstream.
    third = await client.post("/api/embed", data=EMBED[:-1] + b" }")
    assert third.headers[HEADER] == "miss"
    assert _at_upstream(fake, "/api/embed") == 2


async def test_the_access_line_names_the_cache_for_a_hit(
    client: GatewayClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aigateway.access"):
        await _twice(client, "/api/embed", EMBED)
    lines = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    embeds = [line for line in lines if "path=/api/embed" in line]
    assert len(embeds) == 2
    assert "upstream=" not in embeds[0]  # (one upstream: the line as it always was)
    assert "upstream=(cache)" in embeds[1]


async def test_a_stream_is_replayed_chunked_as_it_came(
    client: GatewayClient, fake: FakeOllama
) -> None:
    once, again = await _twice(client, "/api/chat", CHAT)
    assert again == once
    lines = [json.loads(line) for line in again.splitlines()]
    assert len(lines) > 2 and lines[-1]["done"] is True
    assert _at_upstream(fake, "/api/chat") == 1
    # Replayed without a length, as the upstream's stream came.
    hit = await client.post("/api/chat", data=CHAT)
    assert "Content-Length" not in hit.headers
    assert hit.headers["Transfer-Encoding"] == "chunked"
    assert await hit.read() == once


async def test_an_openai_stream_is_replayed_with_the_usage_it_asked_for_removed(
    client: GatewayClient, fake: FakeOllama
) -> None:
    body = (
        b'{"model":"llama3.2","stream":true,"temperature":0,"seed":7,'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    once, again = await _twice(client, "/v1/chat/completions", body)
    assert again == once
    assert b'"usage"' not in again  # (the relay asked for it; the client did not)
    assert again.rstrip().endswith(b"data: [DONE]")
    assert _at_upstream(fake, "/v1/chat/completions") == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"llama3.2","messages":[],"options":{"temperature":0}}',  # no seed
        b'{"model":"llama3.2","messages":[],"options":{"seed":1}}',  # sampled
        b'{"model":"llama3.2","messages":[],"options":{"temperature":0.1,"seed":1}}',
    ],
)
async def test_a_generation_that_does_not_fix_its_sampling_is_never_kept(
    client: GatewayClient, fake: FakeOllama, body: bytes
) -> None:
    for _ in range(2):
        resp = await client.post("/api/chat", data=body)
        assert resp.status == 200
        assert HEADER not in resp.headers
        await resp.read()
    assert _at_upstream(fake, "/api/chat") == 2


def test_fixed_sampling_is_read_as_go_reads_the_body() -> None:
    native = [
        (b'{"options":{"temperature":0,"seed":1}}', True),
        (b'{"options":{"temperature":0.0,"seed":-3}}', True),
        (b'{"Options":{"temperature":0,"seed":1}}', True),  # a folded key
        (b'{"options":{"temperature":0},"options":{"seed":1}}', True),  # maps merge
        (b'{"options":{"temperature":0,"seed":1},"options":null}', False),  # null: nil
        (b'{"options":{"Temperature":0,"seed":1}}', False),  # map keys are exact
        (b'{"options":{"temperature":false,"seed":1}}', False),
        (b'{"options":{"temperature":"0","seed":1}}', False),
        (b'{"temperature":0,"seed":1}', False),  # not Ollama's own fields
        (b"not json", False),
    ]
    for body, fixed in native:
        assert fixed_sampling(body, True) is fixed, body
    openai_dialect = [
        (b'{"temperature":0,"seed":1}', True),
        (b'{"TEMPERATURE":0,"s\xc5\xbfeed":1}', False),  # the long s folds to S, not "se"
        (b'{"TEMPERATURE":0,"\xc5\xbfEED":1}', True),  # ...so this is SEED to Go
        (b'{"temperature":0,"seed":1,"seed":null}', False),  # the last wins
        (b'{"temperature":1,"temperature":0,"seed":1}', True),
        (b'{"options":{"temperature":0,"seed":1}}', False),
    ]
    for body, fixed in openai_dialect:
        assert fixed_sampling(body, False) is fixed, body


async def test_scopes_keep_users_apart_and_share_between_a_users_keys(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    db_path: str,
) -> None:
    alice = await make_key(db_path, "alice", "laptop")
    alice_too = await make_key(db_path, "alice", "phone")
    bob = await make_key(db_path, "bob", "laptop")
    for scope, hits in (("user", ["miss", "hit", "miss"]), ("global", ["miss", "hit", "hit"])):
        gateway = await aiohttp_server(create_app(replace(settings, cache_scope=scope)))
        await _listed(gateway)
        seen = []
        for secret in (alice, alice_too, bob):
            client: GatewayClient = await aiohttp_client(
                gateway, headers={"Authorization": f"Bearer {secret}"}
            )
            resp = await client.post("/api/embed", data=EMBED)
            assert resp.status == 200
            seen.append(resp.headers[HEADER])
        assert seen == hits, scope
        await gateway.close()
    gateway = await aiohttp_server(create_app(replace(settings, cache_scope="key")))
    await _listed(gateway)
    seen = []
    for secret in (alice, alice_too, alice):
        client = await aiohttp_client(gateway, headers={"Authorization": f"Bearer {secret}"})
        seen.append((await client.post("/api/embed", data=EMBED)).headers[HEADER])
    assert seen == ["miss", "miss", "hit"]


async def test_a_model_replaced_under_its_name_is_not_answered_from_the_cache(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> None:
    """The upstream's digest keys the answer: once its list shows another digest (read
    again within a check interval, or at once after a pull through the gateway), the
    same body is asked of the upstream."""
    gateway = await aiohttp_server(create_app(replace(settings, upstream_check_interval=1.0)))
    await _listed(gateway)
    client: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {key}"}
    )
    await _twice(client, "/api/embed", EMBED)
    tags = orjson.loads(fixture("tags.json"))
    for model in tags["models"]:
        model["digest"] = "f" * 64
    fake.list_bodies["/api/tags"] = orjson.dumps(tags)

    async def missed() -> bool:
        resp = await client.post("/api/embed", data=EMBED)
        return resp.headers.get(HEADER) == "miss"  # (none: the list is being read again)

    deadline = asyncio.get_running_loop().time() + 5
    while not await missed():
        assert asyncio.get_running_loop().time() < deadline, "the new digest was never read"
        await asyncio.sleep(0.2)
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "hit"


async def test_a_stream_the_client_left_is_not_kept_and_holds_nothing(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> None:
    fake.extra_models.append("slow")  # (one line every 0.1 s)
    gateway = await aiohttp_server(create_app(settings))
    await _listed(gateway)
    await eventually(lambda: gateway.app[RELAY].pool.digest_of("slow:latest") is not None)
    client: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {key}"}
    )
    body = CHAT.replace(b"llama3.2", b"slow")
    resp = await client.post("/api/chat", data=body)
    assert resp.headers[HEADER] == "miss"
    await resp.content.readline()
    resp.close()  # the client leaves mid-stream
    answers = gateway.app[RELAY].cache
    assert answers is not None
    await eventually(lambda: len(gateway.app[RELAY].in_flight) == 0)
    assert (len(answers.answers), answers.answers.pending) == (0, 0)
    whole = await client.post("/api/chat", data=body)
    assert whole.headers[HEADER] == "miss"
    await whole.read()
    assert (len(answers.answers), answers.answers.pending) == (1, 0)
    assert (await client.post("/api/chat", data=body)).headers[HEADER] == "hit"


async def test_only_a_complete_200_is_kept(client: GatewayClient, fake: FakeOllama) -> None:
    fake.fail_with = 500  # (after the list was read)
    for _ in range(2):
        resp = await client.post("/api/embed", data=EMBED)
        assert resp.status == 500
        assert resp.headers[HEADER] == "miss"
    assert _at_upstream(fake, "/api/embed") == 2


async def test_a_hit_counts_against_the_keys_rate_limit(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
) -> None:
    limited = await make_key(db_path, "carol", "batch", limits=KeyLimits(rpm=2))
    gateway = await aiohttp_server(create_app(settings))
    await _listed(gateway)
    client: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {limited}"}
    )
    statuses = [(await client.post("/api/embed", data=EMBED)).status for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("price", ["free", "full"])
async def test_a_hit_costs_what_cache_hit_price_says(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
    key: str,
    price: str,
) -> None:
    store = await Store.open(db_path)
    await store.set_price(Price("llama3.2*", 100, 2_000_000))
    await store.close()
    gateway = await aiohttp_server(create_app(replace(settings, cache_hit_price=price)))
    await _listed(gateway)
    client: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {key}"}
    )
    await _twice(client, "/api/embed", EMBED)
    first, second = await _usage(db_path, 2)
    assert first.cost is not None and first.cost > 0
    assert second.cost == (0 if price == "free" else first.cost)


async def test_the_cache_shows_in_metrics(client: GatewayClient) -> None:
    await _twice(client, "/api/embed", EMBED)
    page = await (await client.get("/metrics")).text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in page.splitlines()
        if line.startswith("aigateway_cache_")
    }
    assert values["aigateway_cache_hits_total"] == 1
    assert values["aigateway_cache_misses_total"] == 1
    assert values["aigateway_cache_stored_total"] == 1
    assert values["aigateway_cache_entries"] == 1
    assert values["aigateway_cache_bytes"] > ENTRY_OVERHEAD


async def test_the_official_ollama_client_gets_the_same_embeddings_again(
    gateway: TestServer, key: str, fake: FakeOllama, db_path: str
) -> None:
    client = ollama.AsyncClient(
        host=str(gateway.make_url("")).rstrip("/"), headers={"Authorization": f"Bearer {key}"}
    )
    try:
        first = await client.embed(model="llama3.2", input=["a chunk", "another"])
        second = await client.embed(model="llama3.2", input=["a chunk", "another"])
    finally:
        await client.close()  # type: ignore[no-untyped-call]
    assert second.embeddings == first.embeddings
    assert _at_upstream(fake, "/api/embed") == 1
    assert [r.cached for r in await _usage(db_path, 2)] == [False, True]


async def test_off_by_default_the_answer_carries_no_mark(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    upstream: TestServer,
    db_path: str,
    key: str,
    fake: FakeOllama,
) -> None:
    settings = Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"), token_db_path=db_path
    )
    assert settings.cache_bytes == 0
    gateway = await aiohttp_server(create_app(settings))
    await _listed(gateway)
    client: GatewayClient = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {key}"}
    )
    for _ in range(2):
        resp = await client.post("/api/embed", data=EMBED)
        assert resp.status == 200 and HEADER not in resp.headers
    assert _at_upstream(fake, "/api/embed") == 2


async def test_a_large_body_is_keyed_off_the_event_loop_alike(
    client: GatewayClient, fake: FakeOllama
) -> None:
    body = orjson.dumps({"model": "llama3.2", "input": ["x" * (1024 * 1024 + 1)]})
    once, again = await _twice(client, "/api/embed", body, large=True)
    assert again == once
    assert _at_upstream(fake, "/api/embed") == 1


def test_the_journal_reads_records_of_the_release_before_the_cache(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "journal"))
    journal.open()
    record = UsageRecord(
        1.0, 1, "alice", "laptop", "POST", "/api/embed", "m", 200, 1, 0, 3.0, 1.0, 4, 5,
        False, False, 0, None, "m", None, True,
    )  # fmt: skip
    journal.append(record)
    before = [*record[:-1]]  # no `cached`; and one marked local
    assert journal.current is not None
    with open(journal.current.path, "ab") as file:
        file.write(orjson.dumps(before) + b"\n")
        file.write(orjson.dumps([*before, "local"]) + b"\n")
    read = read_segment(journal.current.path)
    assert read[0] == record
    assert read[1] == record._replace(cached=False)
    assert type(read[2]) is LocalUsageRecord and read[2].cached is False


async def test_a_database_of_the_release_before_upgrades_keeping_its_records(
    database: str,
) -> None:
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(25))  # (the revision before the cache's, 0026)
            await conn.run_sync(old_usage_record)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        (record,) = await store.usage_rows()
        assert (record.key_name, record.cached) == ("old", False)
    finally:
        await store.close()


# --- the store alone ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _keep(cache: ResponseCache, key: bytes, size: int, status: int = 200) -> bool:
    keeper = Keeper(cache, key)
    keeper.add(b"x" * size)
    return keeper.complete(status, "OK", {"Content-Type": "application/json"}, size)


def test_the_least_recently_used_answer_goes_first_and_bytes_stay_bounded() -> None:
    cache = ResponseCache(8 * 4_000, 60)
    for key in (b"a", b"b", b"c"):
        assert _keep(cache, key, 3000)
    assert cache.get(b"a") is not None  # a is now the most recently used
    for key in (b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"k", b"l", b"m", b"n", b"o"):
        assert _keep(cache, key, 3000)
        assert cache.size <= cache.capacity
    assert cache.evicted > 0
    assert cache.get(b"b") is None  # out first: the least recently used
    assert cache.size == sum(answer.size for answer in cache._answers.values())
    assert cache.size <= cache.capacity


def test_an_answer_is_repeated_for_its_ttl_only() -> None:
    clock = Clock()
    cache = ResponseCache(100_000, 10, clock)
    assert _keep(cache, b"k", 10)
    clock.now = 9.9
    assert cache.get(b"k") is not None
    clock.now = 10.0
    assert cache.get(b"k") is None
    assert (len(cache), cache.size) == (0, 0)
    assert (cache.hits, cache.misses) == (1, 1)


def test_answers_on_their_way_hold_at_most_the_capacity_together() -> None:
    cache = ResponseCache(8 * 3000, 60)
    keepers = [Keeper(cache, bytes([n])) for n in range(13)]
    for keeper in keepers:
        keeper.add(b"x" * 2000)
    each = 2000 + CHUNK_OVERHEAD  # (counted as the cache counts it)
    assert cache.pending == 11 * each  # the twelfth would go over: it and the rest hold nothing
    kept = [k.complete(200, "OK", {}, 2000) for k in keepers]
    assert kept == [True] * 11 + [False] * 2
    assert cache.size <= cache.capacity and cache.evicted > 0
    for keeper in keepers:
        keeper.release(None)
    assert cache.pending == 0


def test_too_large_an_answer_or_not_a_200_is_not_kept() -> None:
    cache = ResponseCache(80_000, 60)
    assert not _keep(cache, b"big", 10_001)  # over an eighth
    assert not _keep(cache, b"err", 10, status=404)
    assert len(cache) == 0
    assert _keep(cache, b"ok", 9_000)
    assert cache.clear() == 1 and cache.size == 0
