"""Every take is given back, whatever ends a request (issue 26): a request of a key with
limits of every kind (requests at once, a token quota, a budget, a price) is ended at
each step of the relay: its client gone before its body, midway through it, before any
answer and while its answer streams; its upstream answering an error, breaking, or
unreachable; the gateway stopping while it reads the body, waits for the first byte and
streams; an exception raised inside a step. After each, every counter is back at zero:
the key's slot and token reservation, the budget's reservation, the body memory, the
upstream's slot, the requests in flight, and on PostgreSQL the shared rows too."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import Budget, KeyLimits, Price
from aigateway.relay.state import RELAY, RelayState
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.usage.writer import UsageTap

PRICE = Price("*", per_request=1_000, per_million_input=1_000_000)
LIMITS = KeyLimits(tokens_per_day=10**7, max_concurrent=8)
BODY_LENGTH = 100
SETTLED_WITHIN_S = 5.0  # (PostgreSQL's shared rows are given back with the next batch)


@dataclass
class Gateway:
    server: TestServer
    app: web.Application
    key: str
    relay: RelayState

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def gateway(
    database: str, aiohttp_server: Any, upstream: TestServer, tmp_path: Path
) -> AsyncIterator[Gateway]:
    yield await _gateway(database, aiohttp_server, str(upstream.make_url("")).rstrip("/"), tmp_path)


async def _gateway(database: str, aiohttp_server: Any, ollama: str, tmp_path: Path) -> Gateway:
    store = await Store.open(database)
    try:
        record, key = await store.create_key("acme", "x", "user", None, LIMITS, None)
        await store.set_key_budget(record.id, Budget(10**6, "monthly"))
        await store.set_price(PRICE)
    finally:
        await store.close()
    where = {"database_url": database} if "://" in database else {"token_db_path": database}
    settings = Settings(
        ollama_base_url=ollama,
        usage_journal_dir=str(tmp_path / "journal"),
        shutdown_timeout=2.0,
        **where,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    server = await aiohttp_server(app)  # (cancels the handler of a client that left)
    return Gateway(server, app, key, app[RELAY])


async def _counters(relay: RelayState) -> dict[str, int]:
    """Everything a request takes, as it stands now (all 0 when nothing is held)."""
    (record,) = relay.key_table.records()
    use = relay.limiter.usage_of(record, time.time())
    now = asyncio.get_running_loop().time()
    counters = {
        "key's requests at once": int(use["in_flight"]),  # type: ignore[call-overload]
        "key's tokens reserved": int(use["tokens_reserved"]),  # type: ignore[call-overload]
        "budget reserved": sum(
            int(relay.budgets.view(line, now)["reserved"])  # type: ignore[call-overload]
            for line in record.budgets
        ),
        "body memory held": relay.body_budget.held,
        "key's body memory": sum(relay.body_budget.parts().values()),
        "upstream slots": sum(u.in_flight for u in relay.pool.upstreams),
        "requests in flight": len(relay.in_flight),
    }
    shared = relay.shared
    if shared is not None:  # PostgreSQL: what the rows every gateway shares hold
        async with shared.connection() as conn:
            held = await conn.fetchrow(
                "SELECT coalesce(sum(requests), 0), coalesce(sum(reserved), 0)"
                " FROM instance_in_flight"
            )
            budget = await conn.fetchval("SELECT coalesce(sum(reserved), 0) FROM budget_spend")
            budget_held = await conn.fetchval(
                "SELECT coalesce(sum(reserved), 0) FROM instance_budget_held"
            )
        counters["shared requests at once"] = int(held[0])
        counters["shared tokens reserved"] = int(held[1])
        counters["shared budget reserved"] = int(budget)
        counters["shared budget held"] = int(budget_held)
    return counters


async def _all_back_at_zero(relay: RelayState) -> None:
    deadline = time.monotonic() + SETTLED_WITHIN_S
    while True:
        counters = await _counters(relay)
        if not any(counters.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert counters == dict.fromkeys(counters, 0)


async def _until(check: Callable[[], bool]) -> None:
    """Wait for the request to reach the step the test ends it at."""
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)


def _admitted(relay: RelayState) -> Callable[[], bool]:
    return lambda: len(relay.in_flight) == 1


def _sent_on(relay: RelayState) -> Callable[[], bool]:
    return lambda: sum(u.in_flight for u in relay.pool.upstreams) == 1


def _chat(model: str, stream: bool = True) -> bytes:
    flag = "true" if stream else "false"
    return f'{{"model":"{model}","stream":{flag},"messages":[]}}'.encode()


Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _raw(gateway: Gateway, head_only: bool, body: bytes = b"") -> Raw:
    """A client that sends a request's head (and `body`, part of BODY_LENGTH bytes), and
    then waits to be closed."""
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: gw\r\n"
        + f"Authorization: Bearer {gateway.key}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {BODY_LENGTH}\r\n\r\n".encode()
        + (b"" if head_only else body)
    )
    await writer.drain()
    return reader, writer


async def _close(raw: Raw) -> None:
    _, writer = raw
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _post(gateway: Gateway, body: bytes) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url("/api/chat"),
            data=body,
            headers={"Authorization": f"Bearer {gateway.key}"},
        ) as resp,
    ):
        try:
            return resp.status, await resp.read()
        except aiohttp.ClientPayloadError:
            return resp.status, b"(cut)"


async def client_gone_before_its_body(gateway: Gateway) -> None:
    raw = await _raw(gateway, head_only=True)
    await _until(_admitted(gateway.relay))
    await _close(raw)


async def client_gone_midway_through_its_body(gateway: Gateway) -> None:
    raw = await _raw(gateway, head_only=False, body=b'{"model":"llama3.2",')
    await _until(lambda: gateway.relay.body_budget.held > 0)
    await _close(raw)


async def client_gone_before_any_answer(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(_post_with(session, gateway, _chat("silent", False)))
        await _until(_sent_on(gateway.relay))
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request


async def client_gone_while_its_answer_streams(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url("/api/chat"),
            data=_chat("stall"),
            headers={"Authorization": f"Bearer {gateway.key}"},
        ) as resp,
    ):
        assert resp.status == 200
        await resp.content.readline()  # the first line, then the client leaves
        resp.close()


async def _post_with(session: aiohttp.ClientSession, gateway: Gateway, body: bytes) -> int:
    async with session.post(
        gateway.url("/api/chat"), data=body, headers={"Authorization": f"Bearer {gateway.key}"}
    ) as resp:
        await resp.read()
        return resp.status


async def upstream_answers_an_error(gateway: Gateway) -> None:
    assert (await _post(gateway, _chat("llama9")))[0] == 404


async def upstream_breaks_midway(gateway: Gateway) -> None:
    status, _ = await _post(gateway, _chat("broken"))
    assert status == 200


async def answered_whole(gateway: Gateway) -> None:
    status, _ = await _post(gateway, _chat("llama3.2"))
    assert status == 200
    status, _ = await _post(gateway, _chat("llama3.2", stream=False))
    assert status == 200


async def gateway_stops_while_it_reads_the_body(gateway: Gateway) -> None:
    raw = await _raw(gateway, head_only=True)
    await _until(_admitted(gateway.relay))
    await gateway.relay.in_flight.drain(0)
    assert b" 503 " in await raw[0].readline()  # its status line
    await _close(raw)


async def gateway_stops_before_the_first_byte(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(_post_with(session, gateway, _chat("silent", False)))
        await _until(_sent_on(gateway.relay))
        await gateway.relay.in_flight.drain(0)
        assert await request == 503


async def gateway_stops_while_its_answer_streams(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url("/api/chat"),
            data=_chat("stall"),
            headers={"Authorization": f"Bearer {gateway.key}"},
        ) as resp,
    ):
        await resp.content.readline()
        await gateway.relay.in_flight.drain(0)
        assert b"shutting down" in await resp.read()  # the dialect's error, then its end


ENDINGS: dict[str, Callable[[Gateway], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        answered_whole,
        client_gone_before_its_body,
        client_gone_midway_through_its_body,
        client_gone_before_any_answer,
        client_gone_while_its_answer_streams,
        upstream_answers_an_error,
        upstream_breaks_midway,
        gateway_stops_while_it_reads_the_body,
        gateway_stops_before_the_first_byte,
        gateway_stops_while_its_answer_streams,
    )
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_every_counter_is_back_at_zero_whatever_ended_the_request(
    gateway: Gateway, ending: str
) -> None:
    await ENDINGS[ending](gateway)
    await _all_back_at_zero(gateway.relay)


async def test_every_counter_is_back_at_zero_when_the_upstream_is_unreachable(
    database: str, aiohttp_server: Any, tmp_path: Path, unused_tcp_port: int
) -> None:
    gateway = await _gateway(
        database, aiohttp_server, f"http://127.0.0.1:{unused_tcp_port}", tmp_path
    )
    assert (await _post(gateway, _chat("llama3.2")))[0] == 502
    await _all_back_at_zero(gateway.relay)


class Injected(Exception):
    """Raised by a test inside a step of the relay."""


def _boom(*args: object, **kwargs: object) -> Any:
    raise Injected("injected by the test")


async def test_every_counter_is_back_at_zero_after_an_exception_inside_a_step(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised while the body is read (its memory taken), as the request is sent on (its
    reservations and the upstream's slot taken), and while its answer is pumped."""
    relay = gateway.relay
    body = _chat("llama3.2")
    with monkeypatch.context() as patch:
        patch.setattr(relay.body_budget, "try_take", _boom)
        assert (await _post(gateway, body))[0] == 500
    await _all_back_at_zero(relay)
    with monkeypatch.context() as patch:
        patch.setattr(aiohttp.ClientSession, "request", _boom)  # (the relay's, not _request)
        assert (await _post(gateway, body))[0] == 500
    await _all_back_at_zero(relay)
    with monkeypatch.context() as patch:
        patch.setattr(UsageTap, "feed", _boom)
        with contextlib.suppress(aiohttp.ClientError):  # (its head went out: cut short)
            await _post(gateway, body)
    await _all_back_at_zero(relay)
    assert (await _post(gateway, body))[0] == 200  # and the gateway serves on
    await _all_back_at_zero(relay)


@pytest.fixture
def unused_tcp_port() -> Iterator[int]:
    """A port bound, not listening, for the test's length: a connection is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()
