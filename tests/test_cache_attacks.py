"""The response cache attacked (issue 29): a hostile key holder trying to read another's
answers or to have a wrong answer repeated, a careless operator changing what a key may
do, and the bounds and counts a replay or a miss must keep. Each test is one attack on a
real gateway in front of the fake Ollama on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.protocol.body import FULL_PARSE_LIMIT, _fixed_in_order, fixed_sampling
from aigateway.protocol.streams import NDJSON, SSE, ended_whole
from aigateway.relay.inflight import InFlightRequest
from aigateway.relay.state import RELAY
from aigateway.settings import SettingsError
from aigateway.testing import go_json
from aigateway.testing.fake_models import DEMO_MODELS
from aigateway.testing.fake_ollama import FakeOllama, fixture
from aigateway.upstreams.cache import CHUNK_OVERHEAD, Keeper, ResponseCache
from aigateway.upstreams.config import UpstreamConfig

from .conftest import make_key
from .helpers import eventually
from .test_cache import CHAT, EMBED, HEADER, _at_upstream, _listed
from .test_cache import settings as settings  # (the fixture: the cache on, 1 MiB)
from .test_policy import _usage

GatewayClient = TestClient[Request, None]
CHAT_OPTIONS = {"temperature": 0, "seed": 42}


async def _client(aiohttp_client: AiohttpClient, gateway: TestServer, secret: str) -> GatewayClient:
    return await aiohttp_client(gateway, headers={"Authorization": f"Bearer {secret}"})


class Slow(NamedTuple):
    gateway: TestServer
    client: GatewayClient
    body: bytes  # a chat with fixed sampling of the model `slow`


@pytest.fixture
async def slow(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> Slow:
    """A gateway whose upstream also lists `slow` (its streams one line every 0.1 s), once
    it knows the model's digest, and a key's client."""
    fake.extra_models.append("slow")
    gateway = await _started(aiohttp_server, settings)
    await eventually(lambda: gateway.app[RELAY].pool.digest_of("slow:latest") is not None)
    client = await _client(aiohttp_client, gateway, key)
    return Slow(gateway, client, CHAT.replace(b"llama3.2", b"slow"))


async def _started(aiohttp_server: AiohttpServer, settings: Settings) -> TestServer:
    gateway = await aiohttp_server(create_app(settings))
    await _listed(gateway)
    return gateway


# --- poisoning: an answer that is not what Ollama would answer again ---------------------


async def test_a_stream_that_ends_with_ollamas_error_line_is_not_repeated(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> None:
    """Ollama answers a generation that failed midway with a 200 whose last line is
    {"error": ...}: a failure (the runner crashed, memory ran out), not the answer. Kept,
    every later asker would get the failure again until the TTL, without Ollama asked."""
    fake.extra_models.append("midway-error")
    gateway = await _started(aiohttp_server, settings)
    await eventually(lambda: gateway.app[RELAY].pool.digest_of("midway-error:latest") is not None)
    client = await _client(aiohttp_client, gateway, key)
    body = CHAT.replace(b"llama3.2", b"midway-error")
    for _ in range(2):
        resp = await client.post("/api/chat", data=body)
        assert resp.status == 200
        assert await resp.read() == fixture("stream-error-midway.ndjson")
        assert resp.headers[HEADER] == "miss"
    assert _at_upstream(fake, "/api/chat") == 2
    cache = gateway.app[RELAY].cache
    assert cache is not None
    assert (len(cache.answers), cache.answers.pending) == (0, 0)


@pytest.mark.parametrize(
    ("chunks", "content_type", "whole"),
    [
        ([b'{"done":false}\n', b'{"done":true}\n'], NDJSON, True),
        ([b'{"done":false}\n{"do', b'ne":true}', b"\n"], NDJSON, True),  # split anywhere
        ([b'{"done":false}\n{"error":"boom"}\n'], NDJSON, False),
        ([b'{"done":true,"error":"boom"}\n'], NDJSON, False),
        ([b'{"done":false}\n'], NDJSON, False),
        ([b'{"done":"true"}\n'], NDJSON, False),
        ([b'{"done":true}\n'], "application/x-ndjson; charset=utf-8", True),
        ([b"data: {}\n\n", b"data: [DONE]\n\n"], SSE, True),
        ([b"data: {}\n\n", b'data: {"error":{"message":"x"}}\n\n'], SSE, False),
        ([b'{"embeddings":[[0.1]]}'], "application/json; charset=utf-8", True),
    ],
)
def test_only_a_stream_ended_as_its_dialect_ends_a_whole_answer_is_whole(
    chunks: list[bytes], content_type: str, whole: bool
) -> None:
    assert ended_whole(chunks, content_type) is whole


async def test_an_upstream_listing_the_model_without_a_digest_keeps_it_out(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
) -> None:
    """Two Ollamas serve the model; one lists it without a digest (an older Ollama, a
    proxy in front of one): which model it has is unknown, so an answer it gives cannot
    be known to be the other's. The model's digest is then unknown: nothing is kept."""
    plain, bare = FakeOllama(), FakeOllama()
    tags = orjson.loads(fixture("tags.json"))
    for model in tags["models"]:
        del model["digest"]
    bare.list_bodies["/api/tags"] = orjson.dumps(tags)
    servers = [await aiohttp_server(fake.app()) for fake in (plain, bare)]
    upstreams = tuple(
        UpstreamConfig(name=f"gpu{n}", url=str(server.make_url("")).rstrip("/"))
        for n, server in enumerate(servers)
    )
    gateway = await aiohttp_server(create_app(replace(settings, upstreams=upstreams)))
    pool = gateway.app[RELAY].pool
    await eventually(lambda: all(u.models is not None for u in pool.upstreams))
    assert pool.digest_of("llama3.2:latest") is None
    client = await _client(aiohttp_client, gateway, key)
    for _ in range(2):
        resp = await client.post("/api/embed", data=EMBED)
        assert resp.status == 200
        assert HEADER not in resp.headers
        await resp.read()


# --- one tenant, another's answers --------------------------------------------------------


async def test_a_key_whose_allow_list_lost_the_model_is_refused_as_a_live_request_is(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
) -> None:
    """An operator narrows a key's allow-list after its answer was kept: the hit is
    refused exactly as the request would be without the cache (the same status and
    body as a key made with that allow-list), and nothing is replayed."""
    secret = await make_key(db_path, "dave", "laptop")
    narrow = await make_key(db_path, "erin", "laptop", models=["qwen*"])
    gateway = await _started(aiohttp_server, settings)
    client = await _client(aiohttp_client, gateway, secret)
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "miss"
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "hit"
    live = await (await _client(aiohttp_client, gateway, narrow)).post("/api/embed", data=EMBED)
    store = await Store.open(db_path)
    try:
        await store.update_key(("dave", "laptop"), {"models": ["qwen*"]})
    finally:
        await store.close()

    async def refused() -> bool:
        return (await client.post("/api/embed", data=EMBED)).status != 200

    deadline = asyncio.get_running_loop().time() + 5
    while not await refused():
        assert asyncio.get_running_loop().time() < deadline, "the change was never read"
        await asyncio.sleep(0.1)
    hit = await client.post("/api/embed", data=EMBED)
    assert (hit.status, await hit.read()) == (live.status, await live.read())
    assert HEADER not in hit.headers


async def test_a_revoked_key_gets_no_answer_it_was_given(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
) -> None:
    secret = await make_key(db_path, "frank", "laptop")
    gateway = await _started(aiohttp_server, settings)
    client = await _client(aiohttp_client, gateway, secret)
    await client.post("/api/embed", data=EMBED)
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "hit"
    store = await Store.open(db_path)
    try:
        await store.revoke_key("frank", "laptop")
    finally:
        await store.close()

    async def refused() -> bool:
        return (await client.post("/api/embed", data=EMBED)).status == 401

    deadline = asyncio.get_running_loop().time() + 5
    while not await refused():
        assert asyncio.get_running_loop().time() < deadline, "the revocation was never read"
        await asyncio.sleep(0.1)


# --- protocol faithfulness ------------------------------------------------------------------


async def test_a_replayed_whole_answer_has_the_first_ones_framing_and_type(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
) -> None:
    gateway = await _started(aiohttp_server, settings)
    client = await _client(aiohttp_client, gateway, key)
    first = await client.post("/api/embed", data=EMBED)
    once = await first.read()
    second = await client.post("/api/embed", data=EMBED)
    assert await second.read() == once
    assert second.headers[HEADER] == "hit"
    for name in ("Content-Type", "Content-Length"):
        assert second.headers.get(name) == first.headers.get(name), name
    assert "Transfer-Encoding" not in second.headers
    assert "Date" in second.headers
    assert second.headers["X-Request-Id"] != first.headers["X-Request-Id"]


async def test_a_model_replaced_behind_the_gateways_back_is_not_answered_after_a_quiet_while(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> None:
    """One upstream's list is read again only when a request comes a check interval
    after the last read: the request that comes first after a quiet hour must not be
    answered by the digest of an hour ago (the model may have been replaced meanwhile)."""
    gateway = await _started(aiohttp_server, replace(settings, upstream_check_interval=1.0))
    client = await _client(aiohttp_client, gateway, key)
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "miss"
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "hit"
    tags = orjson.loads(fixture("tags.json"))
    for model in tags["models"]:
        model["digest"] = "f" * 64
    fake.list_bodies["/api/tags"] = orjson.dumps(tags)  # re-pulled, not through the gateway
    await asyncio.sleep(1.1)  # (quiet for more than a check interval)
    resp = await client.post("/api/embed", data=EMBED)
    assert resp.status == 200
    assert resp.headers.get(HEADER) != "hit"
    assert _at_upstream(fake, "/api/embed") == 2
    pool = gateway.app[RELAY].pool
    await eventually(lambda: pool.digest_of("llama3.2:latest") == "f" * 64)
    assert (await client.post("/api/embed", data=EMBED)).headers[HEADER] == "miss"


async def test_an_alias_pointed_elsewhere_is_not_answered_by_its_old_target(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    db_path: str,
    key: str,
) -> None:
    fake.extra_models.append("qwen3:8b")
    store = await Store.open(db_path)
    try:
        await store.set_alias("embedder", "llama3.2")
    finally:
        await store.close()
    gateway = await _started(aiohttp_server, settings)
    await eventually(lambda: gateway.app[RELAY].pool.digest_of("qwen3:8b") is not None)
    client = await _client(aiohttp_client, gateway, key)
    body = EMBED.replace(b"llama3.2", b"embedder")
    assert (await client.post("/api/embed", data=body)).headers[HEADER] == "miss"
    assert (await client.post("/api/embed", data=body)).headers[HEADER] == "hit"
    store = await Store.open(db_path)
    try:
        await store.set_alias("embedder", "qwen3:8b")
    finally:
        await store.close()

    async def sent_to_qwen() -> bool:
        resp = await client.post("/api/embed", data=body)
        assert resp.status == 200
        if fake.requests[-1].model != "qwen3:8b":
            assert resp.headers[HEADER] == "hit"  # (the alias not read yet)
            return False
        assert resp.headers[HEADER] == "miss"
        return True

    deadline = asyncio.get_running_loop().time() + 5
    while not await sent_to_qwen():
        assert asyncio.get_running_loop().time() < deadline, "the alias was never read"
        await asyncio.sleep(0.1)
    assert (await client.post("/api/embed", data=body)).headers[HEADER] == "hit"
    assert fake.requests[-1].model == "qwen3:8b"  # (the hit reached no upstream)


# --- resources -------------------------------------------------------------------------


def test_an_answer_on_its_way_is_counted_as_the_cache_counts_it() -> None:
    """Ollama streams a token a chunk: an answer of many small chunks costs the cache
    their overhead too. The Keeper counts it alike, so that it lets go of an answer the
    cache would refuse instead of holding it to the end, and `pending` bounds memory."""
    cache = ResponseCache(8 * 4_000, 60)
    keeper = Keeper(cache, b"k")
    for _ in range(4_000 // CHUNK_OVERHEAD):
        keeper.add(b"x")
    assert cache.pending == 0  # let go: it could never be kept
    assert not keeper.complete(200, "OK", {"Content-Type": "application/x-ndjson"}, None)
    fits = Keeper(cache, b"fits")
    fits.add(b"x" * 1_000)
    assert cache.pending == 1_000 + CHUNK_OVERHEAD
    fits.release(None)
    assert cache.pending == 0


async def test_concurrent_misses_of_one_key_ask_the_upstream_once(
    slow: Slow, fake: FakeOllama
) -> None:
    gateway, client, body = slow

    async def ask() -> bytes:
        resp = await client.post("/api/chat", data=body)
        assert resp.status == 200
        return await resp.read()

    answers = await asyncio.gather(*(ask() for _ in range(4)))
    assert len(set(answers)) == 1
    assert _at_upstream(fake, "/api/chat") == 1
    cache = gateway.app[RELAY].cache
    assert cache is not None
    assert (cache.answers.hits, cache.answers.misses, cache.answers.pending) == (3, 1, 0)


async def test_requests_waiting_for_an_answer_not_kept_ask_the_upstream_themselves(
    slow: Slow, fake: FakeOllama
) -> None:
    """The first of a burst leaves mid-stream: nothing is kept, and those that waited for
    it go on to the upstream (and get their whole answers)."""
    _, client, body = slow
    first = await client.post("/api/chat", data=body)
    await first.content.readline()

    async def ask() -> bytes:
        resp = await client.post("/api/chat", data=body)
        assert resp.status == 200
        return await resp.read()

    waiting = [asyncio.ensure_future(ask()) for _ in range(2)]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiting)
    first.close()  # the leader's client leaves: its answer is not kept
    answers = await asyncio.gather(*waiting)
    assert answers[0] == answers[1]
    assert json.loads(answers[0].splitlines()[-1])["done"] is True
    # (the first to go on leads again; the other waited for it)
    assert _at_upstream(fake, "/api/chat") == 2


async def _stalled_hit(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, settings: Settings, key: str
) -> tuple[TestServer, asyncio.StreamReader, asyncio.StreamWriter]:
    """A gateway sending a large kept answer (its embeddings, some megabytes) to a
    client that reads nothing: the replay waits on the socket, midway."""
    fake = FakeOllama(catalog=DEMO_MODELS)
    upstream = await aiohttp_server(fake.app())
    url = str(upstream.make_url("")).rstrip("/")
    gateway = await _started(
        aiohttp_server, replace(settings, ollama_base_url=url, cache_bytes=128 * 1024**2)
    )
    body = orjson.dumps({"model": "llama3.2", "input": [f"chunk {n}" for n in range(300)]})
    first = await (await _client(aiohttp_client, gateway, key)).post("/api/embed", data=body)
    whole = len(await first.read())
    assert first.headers[HEADER] == "miss" and whole > 8 * 1024**2  # (> a socket's buffers)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert gateway.port is not None
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"POST /api/embed HTTP/1.1\r\nHost: gw\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    relay = gateway.app[RELAY]

    def replaying() -> bool:
        (request,) = relay.in_flight.requests or (None,)
        return (
            isinstance(request, InFlightRequest)
            and request.exchange is not None
            and (request.exchange.first_byte_at is not None)
        )

    await eventually(replaying)
    await asyncio.sleep(0.2)  # (stuck on the socket by now)
    (request,) = relay.in_flight.requests
    assert isinstance(request, InFlightRequest) and request.exchange is not None
    assert request.exchange.tap.total < whole, "the replay was not held midway"
    return gateway, reader, writer


@pytest.mark.parametrize("stop", ["graceful", "admin"])
async def test_a_stop_ends_a_hit_midway_as_it_ends_an_upstreams_answer(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
    db_path: str,
    stop: str,
) -> None:
    """A stop (the gateway's graceful one, or an admin's from Now) cancels a request not
    answering yet (503) and cuts one whose answer is on its way where its upstream's bytes
    come in. A hit has no upstream: cancelled midway like one not answering yet, it was
    given a second response, a 503's head and body, written into the first one's body."""
    gateway, reader, writer = await _stalled_hit(aiohttp_server, aiohttp_client, settings, key)
    in_flight = gateway.app[RELAY].in_flight
    if stop == "graceful":
        await in_flight.drain(0)
    else:
        (request,) = in_flight.requests
        assert isinstance(request, InFlightRequest)
        request.stop_by("root/ops")
    received = await reader.read()  # (to the end: the connection closed)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 503" not in received
    assert b"shutting down" not in received  # (a body with a length: only cut, not added to)
    head, _, sent = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    assert len(sent) < length  # seen as cut short
    (record,) = [r for r in await _usage(db_path, 2) if r.cached]
    assert record.status == 200 and not record.client_gone
    assert record.stopped_by == (None if stop == "graceful" else "root/ops")


# --- determinism: which generations are kept, as Go reads their bodies ----------------

_SPELLINGS = ("options", "Options", "OPTIONS", "option\u017f")  # (the long s folds to S)
_OPTIONS: tuple[object, ...] = (
    {"temperature": 0, "seed": 1},
    {"temperature": 0.0, "seed": -1},
    {"temperature": -0.0, "seed": 1e30},
    {"temperature": 0},
    {"seed": 1},
    {"temperature": 0.5, "seed": 1},
    {"Temperature": 0, "seed": 1},
    {"temperature": None, "seed": 1},
    {"temperature": False, "seed": 1},
    {"temperature": "0", "seed": 1},
    None,
)


def _native_bodies() -> list[bytes]:
    members = [(key, value) for key in _SPELLINGS for value in _OPTIONS]
    bodies = []
    for first in members:
        for second in [None, *members]:
            chosen = [first] if second is None else [first, second]
            text = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in chosen)
            bodies.append(('{"model":"llama3.2","messages":[],' + text + "}").encode())
    bodies.append(b'{"model":"llama3.2","options":{"temperature":1e-400,"seed":7}}')
    bodies.append(b'{"model":"llama3.2","options":{"temperature":0,"seed":7}} ')
    bodies.append(b'{"model":"llama3.2","opt\\u0069ons":{"temperature":0,"seed":7}}')
    return bodies


def test_a_native_generation_is_kept_exactly_when_go_reads_fixed_sampling() -> None:
    """Against the fake's own Go decoder (testing/go_json.py, written apart): folded
    member names, maps merged across repeated members, null, types. (A body Go refuses
    is answered 400 and never kept.)"""
    for body in _native_bodies():
        try:
            options = go_json.decode(body).get("options") or {}
        except go_json.GoDecodeError:
            continue
        numbers = (int, float)
        temperature, seed = options.get("temperature"), options.get("seed")
        fixed = type(temperature) in numbers and temperature == 0 and type(seed) in numbers
        assert fixed_sampling(body, True) is fixed, body


def test_an_openai_generation_is_read_alike_fast_or_in_order() -> None:
    """The quick read (orjson) decides the OpenAI dialect's top-level temperature and
    seed as the ordered read does, on every mix of spellings, repeats and nulls."""
    spellings = ("temperature", "Temperature", "seed", "SEED", "\u017feed")
    values: tuple[object, ...] = (0, 0.0, -0.0, 1, None, "0", True, 1e30)
    members = [(key, value) for key in spellings for value in values]
    for first in members:
        for second in members:
            for third in (None, ("seed", 3), ("temperature", 0)):
                chosen = [first, second] if third is None else [first, second, third]
                text = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in chosen)
                body = ('{"model":"llama3.2",' + text + "}").encode()
                assert fixed_sampling(body, False) is _fixed_in_order(body, False), body


def test_deciding_whether_a_generation_is_kept_costs_about_a_parse() -> None:
    """Every generation the cache could answer is read for its sampling on the event
    loop (up to FULL_PARSE_LIMIT): the ordered read of a chat of many small messages
    held the loop several times as long as parsing it, a stall any key could cause at
    will. Measured against orjson's parse of the same body, the best of three."""
    messages = [{"role": "user", "content": "x"} for _ in range(20_000)]
    body = orjson.dumps({"model": "llama3.2", "messages": messages, "options": CHAT_OPTIONS})
    assert len(body) < FULL_PARSE_LIMIT

    def best(work: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return min(times)

    parse = best(lambda: orjson.loads(body))
    assert fixed_sampling(body, True)
    assert best(lambda: fixed_sampling(body, True)) < 1.5 * parse  # (it was 2.5 to 8 times)


# --- the Keeper released on every path ---------------------------------------------------


async def test_an_answer_kept_after_failing_over_is_the_second_upstreams_whole_answer(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
) -> None:
    busy, able = FakeOllama(), FakeOllama()
    servers = [await aiohttp_server(fake.app()) for fake in (busy, able)]
    upstreams = tuple(
        UpstreamConfig(name=f"gpu{n}", url=str(server.make_url("")).rstrip("/"))
        for n, server in enumerate(servers)
    )
    gateway = await aiohttp_server(create_app(replace(settings, upstreams=upstreams)))
    await _listed(gateway)
    busy.fail_with = 503  # (after its list was read: it answers 503, and the next is tried)
    client = await _client(aiohttp_client, gateway, key)
    first = await client.post("/api/embed", data=EMBED)
    assert (first.status, first.headers[HEADER]) == (200, "miss")
    once = await first.read()
    cache = gateway.app[RELAY].cache
    assert cache is not None
    assert (len(cache.answers), cache.answers.pending) == (1, 0)
    again = await client.post("/api/embed", data=EMBED)
    assert again.headers[HEADER] == "hit" and await again.read() == once
    assert _at_upstream(able, "/api/embed") == 1


async def test_a_graceful_stop_midway_through_a_miss_keeps_nothing_and_holds_nothing(
    slow: Slow,
) -> None:
    gateway, client, body = slow
    resp = await client.post("/api/chat", data=body)
    assert resp.headers[HEADER] == "miss"
    await resp.content.readline()
    relay = gateway.app[RELAY]
    await relay.in_flight.drain(0)
    assert b"shutting down" in await resp.read()
    cache = relay.cache
    assert cache is not None
    await eventually(lambda: len(relay.in_flight) == 0)
    assert (len(cache.answers), cache.answers.pending) == (0, 0)


async def test_a_client_leaving_midway_through_a_hit_is_recorded_as_such(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
    db_path: str,
) -> None:
    gateway, _, writer = await _stalled_hit(aiohttp_server, aiohttp_client, settings, key)
    writer.transport.abort()
    relay = gateway.app[RELAY]
    await eventually(lambda: len(relay.in_flight) == 0)
    (record,) = [r for r in await _usage(db_path, 2) if r.cached]
    assert record.client_gone and record.cost == 0
    cache = relay.cache
    assert cache is not None
    assert (cache.answers.hits, cache.answers.misses, len(cache.answers)) == (1, 1, 1)


# --- protocol: usage the relay asked for, on a hit ----------------------------------------


async def test_a_hit_gives_the_usage_chunk_to_the_client_that_asked_for_it_only(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    fake: FakeOllama,
    key: str,
) -> None:
    """The relay asks Ollama for the usage of a stream whose client did not (and takes it
    out again): such a body, as sent upstream, is the body of a client that asked. One
    kept answer serves both, each as it asked, whichever came first."""
    gateway = await _started(aiohttp_server, settings)
    client = await _client(aiohttp_client, gateway, key)
    plain = (
        b'{"model":"llama3.2","stream":true,"temperature":0,"seed":7,'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    asking = plain[:-1] + b',"stream_options":{"include_usage":true}}'
    seen = []
    for body in (asking, plain, asking):
        resp = await client.post("/v1/chat/completions", data=body)
        answer = await resp.read()
        seen.append(resp.headers[HEADER])
        assert (b'"usage"' in answer) is (body == asking), body
        assert answer.rstrip().endswith(b"data: [DONE]")
    assert seen == ["miss", "hit", "hit"]
    assert _at_upstream(fake, "/v1/chat/completions") == 1


async def test_an_answer_asked_before_the_cache_was_emptied_is_not_kept(
    slow: Slow, aiohttp_client: AiohttpClient, admin_key: str
) -> None:
    """An admin empties the cache after replacing a model by hand (DELETE /admin/cache):
    an answer asked before, still on its way from the replaced model, must not be kept
    after it, to be repeated for the TTL as if the emptying had not been."""
    gateway, client, body = slow
    resp = await client.post("/api/chat", data=body)
    assert resp.headers[HEADER] == "miss"
    await resp.content.readline()
    cache = gateway.app[RELAY].cache
    assert cache is not None
    admin = await _client(aiohttp_client, gateway, admin_key)
    assert (await admin.delete("/admin/cache")).status == 200
    await resp.read()
    assert (len(cache.answers), cache.answers.pending) == (0, 0)
    again = await client.post("/api/chat", data=body)
    assert again.headers[HEADER] == "miss"
    await again.read()
    assert (await client.post("/api/chat", data=body)).headers[HEADER] == "hit"


# --- a careless operator -------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["256", "64K", "1000000"])
def test_a_cache_too_small_to_keep_anything_stops_start_up(raw: str) -> None:
    """`CACHE_SIZE=256` (the M forgotten) turned on a cache of 256 bytes: an eighth of it
    holds no answer, so every request said "miss", held its answer on the way, and kept
    nothing, silently."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"CACHE_SIZE": raw}, env_file=None)
    assert str(info.value).startswith("CACHE_SIZE: expected 0 (off) or at least 1M")
    assert Settings.from_env({"CACHE_SIZE": "1M"}, env_file=None).cache_bytes == 1024**2
    assert Settings.from_env({"CACHE_SIZE": "off"}, env_file=None).cache_bytes == 0


async def test_an_answer_that_only_loaded_the_model_is_not_repeated(
    slow: Slow, fake: FakeOllama
) -> None:
    """A generation without a prompt only loads the model (Ollama answers `done_reason`
    load): answered from the cache, the model would not be loaded."""
    _, client, _ = slow
    body = b'{"model":"llama3.2","prompt":"","options":{"temperature":0,"seed":1}}'
    for _ in range(2):
        resp = await client.post("/api/generate", data=body)
        assert resp.status == 200 and resp.headers[HEADER] == "miss"
        assert (await resp.json())["done_reason"] == "load"
    assert _at_upstream(fake, "/api/generate") == 2
