"""The real thing: `python -m aigateway` as its own process, as run.sh starts it."""

from __future__ import annotations

import asyncio
import os
import re
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

from aigateway.db.store import Store
from aigateway.server import pages_to_open
from aigateway.settings import Settings
from aigateway.testing.fake_ollama import FakeOllama, fixture

from .helpers import eventually

ROOT = Path(__file__).resolve().parent.parent


class Gateway:
    def __init__(
        self, process: subprocess.Popen[str], url: str, log_file: Path, console: Path
    ) -> None:
        self.process, self.url, self.log_file, self.console = process, url, log_file, console

    async def stop(self, timeout: float = 60) -> str:
        """SIGTERM, wait, and return what it wrote to the console. One that has not ended
        by then, or whose test is cut short meanwhile (its timeout), is killed: a test
        never leaves a gateway running (one was found serving an hour after its test)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.console.read_text()


async def start_gateway(
    upstream: TestServer, db_path: str, tmp_path: Path, **settings: str
) -> Gateway:
    """`python -m aigateway` in front of `upstream`, once it answers /health."""
    log_file = tmp_path / "gateway.log"
    earlier = log_file.stat().st_size if log_file.exists() else 0  # a restart's log goes on
    env = {
        **os.environ,
        # This tree's package, whatever the interpreter has installed (a git worktree
        # beside an editable install of another).
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
        "OLLAMA_BASE_URL": str(upstream.make_url("")).rstrip("/"),
        "PORT": "0",  # the system's choice, read back from the log: no port to race for
        "TOKEN_DB_PATH": db_path,
        "LOG_FILE": str(log_file),
        "LOG_FILE_LEVEL": "DEBUG",
        **settings,
    }
    console = tmp_path / "console.log"
    # A file, not a pipe: nobody reads a pipe while the test runs, and a full pipe
    # would block the gateway's logging.
    with console.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aigateway"],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = await _answering(process, log_file, earlier, console)
    except BaseException:
        process.kill()  # not left running after the test
        process.wait()
        raise
    return Gateway(process, url, log_file, console)


async def _answering(
    process: subprocess.Popen[str], log_file: Path, earlier: int, console: Path
) -> str:
    """The URL of a gateway starting, once it answers /health."""
    deadline = time.monotonic() + 30
    url = f"http://127.0.0.1:{await _bound_port(process, log_file, earlier, console, deadline)}"
    async with aiohttp.ClientSession() as session:
        while True:
            assert process.poll() is None, console.read_text()
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return url
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "gateway did not start"
            await asyncio.sleep(0.1)


async def start_gateways(
    upstream: TestServer, tmp_path: Path, *each: dict[str, str]
) -> list[Gateway]:
    """One gateway per settings in `each`, in folders gw0, gw1, ... of `tmp_path`, all
    starting at once (each start is mostly a new interpreter's imports); if one fails,
    those that started are stopped."""
    folders = [tmp_path / f"gw{n}" for n in range(len(each))]
    for folder in folders:
        folder.mkdir()
    started = await asyncio.gather(
        *(
            start_gateway(upstream, str(folder / "unused.db"), folder, **settings)
            for folder, settings in zip(folders, each, strict=True)
        ),
        return_exceptions=True,
    )
    gateways = [gateway for gateway in started if isinstance(gateway, Gateway)]
    for failed in started:
        if isinstance(failed, BaseException):
            for gateway in gateways:
                gateway.process.kill()
                gateway.process.wait()
            raise failed
    return gateways


LISTENING = re.compile(r" listening on https?://\S+:(\d+);")


async def _bound_port(
    process: subprocess.Popen[str], log_file: Path, earlier: int, console: Path, deadline: float
) -> int:
    """The port a gateway started with PORT=0 took, from its "listening on" log line (the
    first after `earlier` bytes of the log)."""
    while True:
        assert process.poll() is None, console.read_text()
        written = log_file.read_bytes()[earlier:] if log_file.exists() else b""
        found = LISTENING.search(written.decode(errors="replace"))
        if found:
            return int(found[1])
        assert time.monotonic() < deadline, "gateway did not start"
        await asyncio.sleep(0.05)


@pytest.fixture
async def gateway_process(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(upstream, db_path, tmp_path)
    yield gateway
    if gateway.process.poll() is None:
        gateway.process.kill()
    gateway.process.wait()


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
    stderr = await gateway_process.stop()
    assert gateway_process.process.returncode == 0, stderr
    assert "Traceback" not in stderr
    store = await Store.open(db_path)
    (record,) = await store.list_keys()
    await store.close()
    assert record.last_used_at is not None  # flushed on the way out
    log_text = gateway_process.log_file.read_text()
    access_line = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO aigateway.access rid=\w+-\w+"
        r" client=127\.0\.0\.1 user=alice key=laptop method=POST path=/api/generate"
        r" model=llama3.2:latest status=200"
        rf" bytes={len(fixture('generate-stream.ndjson'))} ms=\d+\.\d$",
        re.MULTILINE,
    )
    assert access_line.search(log_text), log_text
    assert access_line.search(stderr), stderr  # the console at LOG_LEVEL INFO
    assert key not in log_text and key not in stderr
    # The start-up line says where to open the dashboard and the API docs.
    url = gateway_process.url
    start_up = next(line for line in log_text.splitlines() if " listening on " in line)
    assert start_up.endswith(f"; dashboard {url}/ui/; API docs {url}/docs"), start_up


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
    await eventually(lambda: any(r.path_qs == "/api/chat" for r in fake.requests))
    task.cancel()
    took = await eventually(lambda: len(fake.abandoned) == 1)
    assert took < 1.0


async def test_start_up_warns_when_the_one_ollama_does_not_answer(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path, dead_port: int
) -> None:
    """As several upstreams are checked as the gateway starts, the one Ollama is asked:
    a wrong OLLAMA_BASE_URL is in the log at once, not at the first user's 502."""
    dead = f"http://127.0.0.1:{dead_port}"
    gateway = await start_gateway(upstream, db_path, tmp_path, OLLAMA_BASE_URL=dead)
    try:
        await eventually(lambda: "requests get 502" in gateway.log_file.read_text(), 10)
        line = next(
            line for line in gateway.log_file.read_text().splitlines() if "requests get 502" in line
        )
        assert " WARNING " in line and "Ollama did not answer" in line and dead in line, line
    finally:
        stderr = await gateway.stop()
    assert "Traceback" not in stderr


async def test_start_up_says_nothing_when_the_one_ollama_answers(
    gateway_process: Gateway, fake: FakeOllama
) -> None:
    await eventually(lambda: any(r.path_qs == "/api/version" for r in fake.requests), 10)
    await asyncio.sleep(0.2)
    assert "502" not in gateway_process.log_file.read_text()


def test_the_pages_to_open_follow_the_settings() -> None:
    def pages(**values: str) -> str:
        return pages_to_open(Settings.from_mapping(values), 8000)

    assert pages() == "dashboard http://127.0.0.1:8000/ui/; API docs http://127.0.0.1:8000/docs"
    assert pages(HOST="0.0.0.0", UI_PATH="/dash/", BASE_PATH="/ollama/api") == (
        "dashboard http://127.0.0.1:8000/dash/; API docs http://127.0.0.1:8000/docs"
    )
    assert pages(HOST="::1", UI_PATH="off") == (
        "dashboard off (UI_PATH=off); API docs http://[::1]:8000/docs"
    )
    assert pages(HOST="gpu-box") == (
        "dashboard http://gpu-box:8000/ui/; API docs http://gpu-box:8000/docs"
    )


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


async def test_sigterm_after_10000_requests_loses_no_usage_record(
    gateway_process: Gateway, key: str, db_path: str
) -> None:
    total, workers = 10_000, 32
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Authorization": f"Bearer {key}"}
    ) as session:
        statuses: list[int] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(
                    gateway_process.url + "/api/chat", data=b'{"model":"llama3.2","stream":false}'
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)

        await asyncio.gather(
            *(worker(total // workers + (i < total % workers)) for i in range(workers))
        )
    assert statuses.count(200) == total
    stderr = await gateway_process.stop()  # at once: records are still queued
    assert gateway_process.process.returncode == 0, stderr
    store = await Store.open(db_path)
    rows = await store.usage_rows()
    await store.close()
    assert len(rows) == total
    assert {(r.prompt_tokens, r.completion_tokens) for r in rows} == {(26, 6)}


async def test_sigkill_under_load_loses_no_usage_record(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> None:
    """Before: a SIGKILL lost every record of the last flush window (950 of 1,037 in one
    burst). Now every request whose answer came back whole has its record after a restart,
    exactly once."""
    gateway = await start_gateway(upstream, db_path, tmp_path)
    completed = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:

        async def worker() -> None:
            nonlocal completed
            while True:
                async with session.post(
                    gateway.url + "/api/chat", data=b'{"model":"llama3.2","stream":false}'
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        completed += 1

        workers = [asyncio.create_task(worker()) for _ in range(16)]
        await eventually(lambda: completed >= 600, timeout=30)
        gateway.process.kill()
        await asyncio.to_thread(gateway.process.wait, 10)
        results = await asyncio.gather(*workers, return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientError) for r in results), results
    restarted = await start_gateway(upstream, db_path, tmp_path)
    await restarted.stop()
    store = await Store.open(db_path)
    rows = await store.usage_rows()
    await store.close()
    # Each answer the client got whole has its record; a request the gateway finished in
    # the instant its client saw the connection die may have one too.
    assert completed <= len(rows) <= completed + 16, (completed, len(rows))
    assert len(rows) == len(set(rows))
    assert not list(Path(db_path + ".usage-journal").glob("seg-*"))
