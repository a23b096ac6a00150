"""The one transport seam to upstreams (upstreams/transport.py): what it yields, how the
client's failures come out of it, and that nothing else in the package speaks aiohttp's
client."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from aigateway.upstreams.transport import (
    Broken,
    ConnectFailed,
    TimedOut,
    Transport,
    UpstreamFailed,
)

PACKAGE = Path(__file__).resolve().parent.parent / "aigateway"
# aiohttp's client: its session, responses, errors, timeouts and connectors.
CLIENT_EXTRA = {"TCPConnector", "ServerTimeoutError", "DummyCookieJar"}


def _client_name(name: str) -> bool:
    return name.startswith("Client") or name in CLIENT_EXTRA


async def _server(aiohttp_server: AiohttpServer) -> str:
    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"only ten b")
        assert request.transport is not None
        request.transport.close()  # (the other ninety never come)
        return response

    app = web.Application()
    app.router.add_get("/whole", whole)
    app.router.add_get("/silent", silent)
    app.router.add_get("/cut", cut)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_send_yields_the_answer_with_its_body_to_read(
    aiohttp_server: AiohttpServer,
) -> None:
    base = await _server(aiohttp_server)
    transport = Transport()
    try:
        async with transport.send("GET", base + "/whole") as response:
            assert (response.status, await response.read()) == (200, b'{"ok":true}')
    finally:
        await transport.close()


async def test_a_refused_connection_is_connect_failed_saying_it_without_the_address(
    dead_port: int,
) -> None:
    transport = Transport()
    try:
        with pytest.raises(ConnectFailed) as failed:
            async with transport.send("GET", f"http://127.0.0.1:{dead_port}/"):
                pass
    finally:
        await transport.close()
    assert failed.value.cause == "ClientConnectorError"
    assert failed.value.public == "Connection refused"
    assert str(dead_port) not in failed.value.public


async def test_silence_is_timed_out(aiohttp_server: AiohttpServer) -> None:
    base = await _server(aiohttp_server)
    transport = Transport()
    try:
        with pytest.raises(TimedOut):
            async with transport.send("GET", base + "/silent", timeout=0.3):
                pass
    finally:
        await transport.close()


async def test_a_body_cut_while_the_caller_reads_it_is_broken(
    aiohttp_server: AiohttpServer,
) -> None:
    base = await _server(aiohttp_server)
    transport = Transport()
    try:
        with pytest.raises(Broken) as broken:
            async with transport.send("GET", base + "/cut") as response:
                await response.read()
    finally:
        await transport.close()
    assert broken.value.cause == "ClientPayloadError"


@pytest.mark.parametrize("error", [ConnectionResetError("client gone"), ValueError("ours")])
async def test_the_callers_own_errors_pass_through_unchanged(
    aiohttp_server: AiohttpServer, error: Exception
) -> None:
    """A client's reset connection (a write to it) and the caller's own errors are not
    the upstream's failures."""
    base = await _server(aiohttp_server)
    transport = Transport()
    try:
        with pytest.raises(type(error)) as raised:
            async with transport.send("GET", base + "/whole"):
                raise error
    finally:
        await transport.close()
    assert raised.value is error
    assert not isinstance(raised.value, UpstreamFailed)


def test_nothing_else_in_the_package_speaks_aiohttps_client() -> None:
    speaking = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        # (the test support, the benchmark and the demo are the gateway's clients; the
        # alerts' sender posts to the operator's receivers, never an upstream, through a
        # connector pinned to the address it checked: a trust boundary of its own)
        clients = ("testing/", "bench/", "demo/")
        own = ("upstreams/transport.py", "alerts/send.py")
        if relative in own or relative.startswith(clients):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _client_name(node.attr):
                speaking.append(f"{relative}: {node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "aiohttp":
                speaking += [f"{relative}: {a.name}" for a in node.names if _client_name(a.name)]
    assert speaking == []
