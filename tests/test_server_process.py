"""The real thing: `python -m aigateway` as its own process, as run.sh starts it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from aigateway.store import Store
from aigateway.testing.fake_ollama import FakeOllama, fixture

from .helpers import eventually

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Gateway:
    def __init__(self, process: subprocess.Popen[str], url: str, log_file: Path) -> None:
        self.process, self.url, self.log_file = process, url, log_file


@pytest.fixture
async def gateway_process(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    port = free_port()
    log_file = tmp_path / "gateway.log"
    env = {
        **os.environ,
        "OLLAMA_BASE_URL": str(upstream.make_url("")).rstrip("/"),
        "PORT": str(port),
        "TOKEN_DB_PATH": db_path,
        "LOG_FILE": str(log_file),
        "LOG_FILE_LEVEL": "DEBUG",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "aigateway"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            await asyncio.sleep(0.1)
    yield Gateway(process, url, log_file)
    if process.poll() is None:
        process.kill()
    process.communicate()


async def test_serves_streams_and_stops_cleanly_on_sigterm(
    gateway_process: Gateway, key: str, db_path: str
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway_process.url + "/api/generate", data=b'{"model":"llama3.2"}', headers=headers
        ) as resp,
    ):
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert await resp.read() == fixture("generate-stream.ndjson")
    gateway_process.process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(gateway_process.process.communicate, timeout=20)
    assert gateway_process.process.returncode == 0, stderr
    assert "Traceback" not in stderr
    store = await Store.open(db_path)
    (record,) = await store.list_keys()
    await store.close()
    assert record.last_used_at is not None  # flushed on the way out
    log_text = gateway_process.log_file.read_text()
    assert "path=/api/generate model=llama3.2 status=200" in log_text
    assert key not in log_text and key not in stderr


async def test_client_leaving_closes_upstream_in_the_real_server(
    gateway_process: Gateway, key: str, fake: FakeOllama
) -> None:
    async def call() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway_process.url + "/api/chat",
                data=b'{"model":"silent","stream":false}',
                headers={"Authorization": f"Bearer {key}"},
            ) as resp,
        ):
            await resp.read()

    task = asyncio.create_task(call())
    await eventually(lambda: len(fake.requests) == 1)
    task.cancel()
    took = await eventually(lambda: len(fake.abandoned) == 1)
    assert took < 1.0


def test_init_db_creates_the_database(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    result = subprocess.run(
        [sys.executable, "-m", "aigateway", "--init-db"],
        cwd=tmp_path,
        env={**os.environ, "TOKEN_DB_PATH": str(db)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert db.exists()


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aigateway", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "TOKEN_DB_PATH": str(tmp_path / "t.db")},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot start")
