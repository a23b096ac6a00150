"""Admission before the body, the body budget, token reservations, Content-Encoding:
what one client can no longer do to the gateway or to a quota."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.errors import ServiceUnavailable
from aigateway.http.appkeys import LIMITER
from aigateway.records import DAY, KeyLimits
from aigateway.relay.bodybudget import BodyBudget
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key
from .helpers import clock_room, eventually, minute_room
from .test_policy import _usage, secret_known

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'


async def _raw(server: TestServer, head: bytes, timeout: float = 3.0) -> bytes:
    """Send a request head (and no body) on a raw socket; return what comes back."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


# --- admission comes before the body ---------------------------------------------------


async def test_a_key_at_its_limit_is_refused_before_its_body_is_sent(
    gateway: TestServer, db_path: str
) -> None:
    """8 connections each announcing a 90 MB body, for a key already at its limit: each
    gets its 429 at once, without the gateway waiting for (or holding) a byte of it."""
    secret = await make_key(db_path, "eve", "flood", limits=KeyLimits(rpm=1))
    await eventually(lambda: secret_known(gateway, secret))
    await minute_room()  # the one request and the refused ones in one minute
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as s,
        s.post(gateway.make_url("/api/chat"), data=CHAT) as resp,
    ):
        assert resp.status == 200
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + secret.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 90000000\r\n\r\n"
    )
    answers = await asyncio.gather(*(_raw(gateway, head) for _ in range(8)))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:80]
        assert b"rate limit reached" in answer
    assert gateway.app[RELAY].body_budget.peak < 1000  # only the first, small body was ever held


async def test_refused_bodies_do_not_count_against_the_rate_limit(
    gateway: TestServer, db_path: str
) -> None:
    secret = await make_key(db_path, "ned", "one", limits=KeyLimits(rpm=1), models=["llama3*"])
    await eventually(lambda: secret_known(gateway, secret))
    await minute_room()  # the one request and the refused one in one minute
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as s:
        async with s.post(gateway.make_url("/api/chat"), data=b'{"model":"qwen3"}') as resp:
            assert resp.status == 403
        async with s.post(gateway.make_url("/api/chat"), data=CHAT) as resp:
            assert resp.status == 200
        async with s.post(gateway.make_url("/api/chat"), data=CHAT) as resp:
            assert resp.status == 429


# --- the body budget -----------------------------------------------------------------------


async def test_body_budget_waits_then_refuses() -> None:
    budget = BodyBudget(100, wait_s=0.2)
    soon = time.monotonic() + 0.2
    await budget.take(1, 60, 60, soon)
    waiting = asyncio.create_task(budget.take(1, 50, 50, soon))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    budget.give_back(1, 60, 60)
    await waiting
    assert budget.held == 50
    with pytest.raises(ServiceUnavailable):
        await budget.take(1, 60, 60, time.monotonic() + 0.2)  # nobody gives back in time
    with pytest.raises(ServiceUnavailable):
        await budget.take(1, 101, 101, time.monotonic() + 1)  # more than all: no use waiting
    assert budget.held == 50


async def test_bodies_held_at_once_stay_within_max_body_memory(
    aiohttp_server: AiohttpServer, settings: Settings, key: str, fake: FakeOllama
) -> None:
    """Twelve clients upload 400 KB bodies at once, some chunked (no declared length),
    against a budget of 1 MB: the gateway never holds more than 1 MB of them; the ones
    that cannot get room in time are told to retry (503), the rest are relayed whole."""
    limited = replace(settings, max_body_bytes=512 * 1024, max_body_memory=1024 * 1024)
    app = create_app(limited)
    server = await aiohttp_server(app)
    app[RELAY].body_budget = BodyBudget(1024 * 1024, wait_s=0.5)  # before the first request
    body = b'{"model":"all-minilm","input":"' + b"x" * 400_000 + b'"}'

    async def slowly() -> object:
        for start in range(0, len(body), 50_000):
            yield body[start : start + 50_000]
            await asyncio.sleep(0.05)

    async def upload(session: aiohttp.ClientSession, chunked: bool) -> int:
        data = slowly() if chunked else body
        async with session.post(server.make_url("/api/embed"), data=data) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        statuses = await asyncio.gather(*(upload(session, i % 2 == 0) for i in range(12)))
    budget = app[RELAY].body_budget
    assert budget.peak <= 1024 * 1024
    assert budget.held == 0
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2
    relayed = [r for r in fake.requests if r.path_qs == "/api/embed"]
    assert len(relayed) == statuses.count(200)
    assert all(r.body == body for r in relayed)


async def test_a_chunked_body_over_the_limit_is_413(
    aiohttp_server: AiohttpServer, settings: Settings, key: str
) -> None:
    small = replace(settings, max_body_bytes=1000)
    server = await aiohttp_server(create_app(small))

    async def chunks() -> object:
        for _ in range(10):
            yield b"x" * 500

    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
        session.post(server.make_url("/api/chat"), data=chunks()) as resp,
    ):
        assert resp.status == 413
        assert server.app[RELAY].body_budget.held == 0


# --- token quotas reserve before they relay ------------------------------------------------


async def _parallel(gateway: TestServer, secret: str, body: bytes, count: int) -> list[int]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as s:

        async def one() -> int:
            async with s.post(gateway.make_url("/api/chat"), data=body) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_parallel_requests_cannot_overrun_a_token_quota(
    gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    """20 requests at once against 100 tokens a day, each using 32 (26 prompt + 6): before,
    all 20 were relayed (640 tokens); now each reserves its prompt estimate plus
    TOKEN_RESERVE, so one runs at a time, and the day ends at the bound the docs state
    (docs/keys-limits-usage.md, Token quotas)."""
    await clock_room(DAY, 30)  # (the day's quota is counted within one day of the clock)
    secret = await make_key(db_path, "qin", "quota", limits=KeyLimits(tokens_per_day=100))
    await eventually(lambda: secret_known(gateway, secret))
    statuses = await _parallel(gateway, secret, CHAT, 20)
    assert statuses.count(200) == 1, statuses
    while 200 in (statuses := await _parallel(gateway, secret, CHAT, 5)):
        pass
    used = gateway.app[LIMITER]._state_for(1 + 2).day_tokens  # key ids: alice, root, qin
    assert used.reserved == 0
    # Admitted while under 100: 32, 64, 96 -> the fourth takes the day to 128; no fifth.
    assert used.used == 128
    rows = await _usage(db_path, 4)
    assert sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in rows) == 128


async def test_a_request_that_caps_its_output_reserves_that_much(
    gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    """With num_predict 2 each request reserves about 30 tokens (its ~90-byte body / 4 +
    2): four of twenty run at once, and the total stays within the stated bound: the
    quota, plus the last one admitted's reservation, plus what they used beyond theirs."""
    await clock_room(DAY, 30)  # (the day's quota is counted within one day of the clock)
    secret = await make_key(db_path, "raj", "capped", limits=KeyLimits(tokens_per_day=100))
    await eventually(lambda: secret_known(gateway, secret))
    body = CHAT[:-1] + b',"options":{"num_predict":2}}'
    reserve = len(body) // 4 + 2
    statuses = await _parallel(gateway, secret, body, 20)
    admitted = statuses.count(200)
    assert admitted == -(-100 // reserve), statuses  # admitted while reserved < 100
    used = 28 * admitted  # 26 prompt + 2 completion each (the fake honours num_predict)
    assert used <= 100 + reserve + admitted * max(0, 28 - reserve)
    assert gateway.app[LIMITER]._state_for(3).day_tokens.used == used


async def test_an_unbounded_num_predict_reserves_the_default(
    gateway: TestServer, db_path: str
) -> None:
    """num_predict -1 (generate until done) must not reserve next to nothing."""
    await clock_room(DAY, 30)  # (the day's quota is counted within one day of the clock)
    secret = await make_key(db_path, "ula", "unbounded", limits=KeyLimits(tokens_per_day=5000))
    await eventually(lambda: secret_known(gateway, secret))
    body = CHAT[:-1] + b',"options":{"num_predict":-1}}'
    statuses = await _parallel(gateway, secret, body, 5)
    assert statuses.count(200) == 3  # 0, ~2070, ~4140 reserved when each was admitted


# --- Content-Encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZIP", gzip.compress)],
)
async def test_a_compressed_body_is_read_and_relayed_decoded_without_the_header(
    client: TestClient[Request, None], fake: FakeOllama, coding: str, encode: object
) -> None:
    assert callable(encode)
    resp = await client.post("/api/chat", data=encode(CHAT), headers={"Content-Encoding": coding})
    assert resp.status == 200
    relayed = fake.requests[-1]
    assert relayed.body == CHAT
    assert "Content-Encoding" not in relayed.headers


async def test_a_compressed_body_is_held_to_the_allow_list(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    secret = await make_key(db_path, "zed", "llama", models=["llama3*"])
    await eventually(lambda: secret_known(gateway, secret))
    client: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {secret}"}
    )
    evil = gzip.compress(b'{"model":"qwen3","stream":false}')
    resp = await client.post("/api/chat", data=evil, headers={"Content-Encoding": "gzip"})
    assert resp.status == 403
    assert not fake.requests


@pytest.mark.parametrize("coding", ["compress", "x-gzip", "gzip, gzip", "base64", "aes128gcm"])
async def test_a_coding_the_gateway_cannot_read_is_415(
    client: TestClient[Request, None], fake: FakeOllama, coding: str
) -> None:
    resp = await client.post(
        "/api/chat", data=gzip.compress(CHAT), headers={"Content-Encoding": coding}
    )
    assert resp.status == 415
    assert "Content-Encoding" in (await resp.json())["error"]
    assert not fake.requests


async def test_a_body_that_is_not_what_its_coding_says_is_400(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    resp = await client.post("/api/chat", data=CHAT, headers={"Content-Encoding": "gzip"})
    assert resp.status == 400
    assert not fake.requests


async def test_a_gzip_bomb_stops_at_max_body_size(
    aiohttp_server: AiohttpServer, settings: Settings, key: str, fake: FakeOllama
) -> None:
    small = replace(settings, max_body_bytes=1024 * 1024)
    server = await aiohttp_server(create_app(small))
    bomb = gzip.compress(b'{"model":"llama3.2","prompt":"' + b"a" * 200 * 1024 * 1024)
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
        session.post(
            server.make_url("/api/generate"), data=bomb, headers={"Content-Encoding": "gzip"}
        ) as resp,
    ):
        assert resp.status == 413
    assert server.app[RELAY].body_budget.peak <= 2 * 1024 * 1024
    assert not fake.requests
