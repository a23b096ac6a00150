"""Malformed request heads: no key in any log line or response body; heads bounded in
size and in time (the real server, as run.sh starts it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from .test_server_process import start_gateway

KEY = "aig_" + "S3cr3tKeyMaterial" * 2 + "x" * 9  # 43 characters after aig_

MALFORMED = [
    b"Authorization: Bearer " + KEY.encode() + b"\x01\r\n",
    b"Authorization: Bearer " + KEY.encode() + b"\x00\r\n",
    b"x-api-key: " + KEY.encode() + b"\x7f\r\n",
    b"x-api-key: " + KEY.encode() + b"\rX: y\r\n",
    b"Authorization: Bearer " + KEY.encode() + b"\r\n continued\r\n",
    b"Authorization : Bearer " + KEY.encode() + b"\r\n",
    b"Bad Name: " + KEY.encode() + b"\r\n",
    b"Authorization: Bearer " + KEY.encode() + b"x" * 9000 + b"\r\n",
]


async def _exchange(port: int, data: bytes, read_for: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1 << 16), read_for)
    finally:
        writer.close()


@pytest.fixture
async def gateway(upstream: TestServer, db_path: str, key: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    gw = await start_gateway(upstream, db_path, tmp_path, IDLE_TIMEOUT="1")
    yield gw
    gw.process.kill()
    gw.process.wait()


async def test_a_malformed_head_never_echoes_or_logs_the_key(gateway) -> None:  # type: ignore[no-untyped-def]
    """Before: aiohttp's 400 body and its 'Error handling request' line carried the key
    for the control-byte cases."""
    port = int(gateway.url.rsplit(":", 1)[1])
    for header in MALFORMED:
        head = b"POST /api/chat HTTP/1.1\r\nHost: gw\r\n" + header + b"Content-Length: 2\r\n\r\n{}"
        answer = await _exchange(port, head)
        assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), (header, answer[:100])
        assert KEY.encode() not in answer and b"S3cr3t" not in answer, answer
    await asyncio.sleep(0.3)
    logs = gateway.log_file.read_text() + gateway.console.read_text()
    assert "S3cr3t" not in logs
    assert "malformed request" in logs


async def test_a_head_sent_too_slowly_is_cut_off(gateway) -> None:  # type: ignore[no-untyped-def]
    port = int(gateway.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /health HTTP/1.1\r\n")
    closed_after = None
    for _ in range(40):  # a byte every 0.1 s, for up to 4 s
        await asyncio.sleep(0.1)
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            break
        if reader.at_eof() or writer.is_closing():
            break
        try:
            if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                break
        except TimeoutError:
            pass
    closed_after = time.monotonic() - started
    writer.close()
    assert closed_after < 2.5, closed_after  # IDLE_TIMEOUT=1


async def test_too_many_headers_are_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    port = int(gateway.url.rsplit(":", 1)[1])
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(70))
    answer = await _exchange(port, b"GET /health HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n")
    assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:80]


async def test_expect_100_continue_is_answered_only_once_the_key_is_good(gateway, key: str) -> None:  # type: ignore[no-untyped-def]
    """Before: aiohttp sent 100 Continue before the key was checked, so a client without
    a valid key sent its whole body before hearing its 401."""
    port = int(gateway.url.rsplit(":", 1)[1])
    body = b'{"model":"llama3.2","stream":false,"messages":[]}'

    def head(secret: str) -> bytes:
        return (
            b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer " + secret.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )

    refused = await _exchange(port, head("aig_" + "n" * 43))
    assert refused.startswith(b"HTTP/1.1 401 "), refused[:60]
    assert b"100 Continue" not in refused
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(key))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
