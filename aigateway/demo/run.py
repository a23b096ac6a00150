"""The demo's run: a throw-away folder, the fake Ollama (in this process), the gateway
(`python -m aigateway`, a child process), the set-up and the traffic, the banner; then
the gateway's log until Ctrl-C (SIGINT) or SIGTERM, which stop the gateway and the fake
and remove the folder.

The gateway runs as its own process, exactly as `./run.sh` runs it: its settings come
only from a settings file in the folder (`--env-file`, with every setting of this
process's environment left out), so neither the project's `.env` nor an exported
DATABASE_URL can point it at real data; and what it prints is the real start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

import aigateway

from ..records import StoreError
from ..settings import Settings, declarations
from ..testing.fake_models import DEMO_MODELS, Pace
from ..testing.fake_ollama import FakeOllama
from ..testing.ports import free_port
from ..upstreams.modelsync import ModelSyncError
from .banner import DEFAULT_PORT, banner
from .data import set_up
from .traffic import TrafficError, make_traffic

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PACKAGE_ROOT = Path(aigateway.__file__).resolve().parent.parent


class DemoError(Exception):
    """What stopped the demo, in one line for the terminal."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="./run.sh demo",
        description="The gateway on a simulated Ollama, with throw-away data (removed on Ctrl-C).",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"the gateway's port (default: {DEFAULT_PORT}, else a free one if it is in use)",
    )
    parser.add_argument(
        "--fast", action="store_true", help="answer at once instead of at a GPU's pace"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_until_stopped(args.port, None if args.fast else Pace()))
    except DemoError as exc:
        sys.stderr.write(f"aigateway demo: {exc}\n")
        return 1
    except OSError as exc:  # no temporary folder, no socket, no process
        sys.stderr.write(f"aigateway demo: cannot run: {exc.strerror or exc}\n")
        return 1
    return 0


async def _until_stopped(port: int | None, pace: Pace | None) -> None:
    """The demo, until a signal cancels it (once: a second Ctrl-C does not cut the
    clean-up short)."""
    work = asyncio.current_task()
    assert work is not None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            work.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await _demo(port, pace)
    except asyncio.CancelledError:
        if not stopping:
            raise
        sys.stderr.write("aigateway demo: stopped; its data is removed\n")


async def _demo(wanted_port: int | None, pace: Pace | None) -> None:
    port = choose_port(wanted_port)
    folder = Path(tempfile.mkdtemp(prefix="aigateway-demo-"))
    try:
        async with _fake_ollama(pace) as ollama_url:
            settings_file = folder / "demo.env"
            settings_file.write_text(
                f"TOKEN_DB_PATH={folder / 'tokens.db'}\nOLLAMA_BASE_URL={ollama_url}\n"
                f"HOST=127.0.0.1\nPORT={port}\nSHUTDOWN_TIMEOUT=2\nLOG_LEVEL=INFO\n"
            )
            settings = Settings.from_env({}, env_file=settings_file)
            try:
                keys = await set_up(settings.token_db_path, ollama_url)
            except (StoreError, ModelSyncError) as exc:
                raise DemoError(f"cannot set up the demo's database: {exc}") from None
            async with _gateway(settings_file) as output:
                url = settings.local_url(port)
                await _answering(url, output)
                try:
                    await make_traffic(url, keys, settings.base_path, settings.v1_path)
                except TrafficError as exc:
                    raise DemoError(f"the demo's traffic went wrong: {exc}") from None
                print(banner(settings, port, keys, folder, ollama_url), flush=True)
                output.relay()
                await output.ended.wait()
                raise DemoError(f"the gateway stopped: {output.last_line()}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def choose_port(wanted: int | None, default: int = DEFAULT_PORT) -> int:
    """`wanted`, which must be free; else `default` if free, else one free a moment ago."""
    port = default if wanted is None else wanted
    with socket.socket() as sock:
        # As the server binds (SO_REUSEADDR): a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise DemoError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
            if wanted is not None:
                raise DemoError(f"port {port} is in use: choose another with --port") from None
            return free_port()
    return port


@contextlib.asynccontextmanager
async def _fake_ollama(pace: Pace | None) -> AsyncIterator[str]:
    """The simulated Ollama on a free port of loopback; its URL."""
    fake = FakeOllama(record=False, catalog=DEMO_MODELS, pace=pace)
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Output:
    """What the gateway prints: held until the demo is ready (its start-up line and the
    traffic's access lines; or why it failed), then passed on to this terminal."""

    def __init__(self) -> None:
        self.held: deque[str] = deque(maxlen=50)
        self.relaying = False
        self.ended = asyncio.Event()

    def relay(self) -> None:
        """Pass on what was held, and from now on each line as it comes."""
        self.relaying = True
        self._write(*self.held)

    def take(self, line: str) -> None:
        self.held.append(line)
        if self.relaying:
            self._write(line)

    def _write(self, *lines: str) -> None:
        sys.stderr.writelines(line + "\n" for line in lines)
        sys.stderr.flush()

    def last_line(self) -> str:
        return self.held[-1] if self.held else "it said nothing"


@contextlib.asynccontextmanager
async def _gateway(settings_file: Path) -> AsyncIterator[Output]:
    """`python -m aigateway` with the demo's settings alone; stopped (SIGTERM, then
    killed if it has not ended in STOP_TIMEOUT_S) when the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aigateway",
        "--env-file",
        str(settings_file),
        cwd=settings_file.parent,
        env=_gateway_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = Output()
    reading = asyncio.create_task(_read(process, output), name="demo-gateway-output")
    try:
        yield output
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        await reading


def _gateway_environment() -> dict[str, str]:
    """This environment without any gateway setting (the settings file holds them all),
    and with this aigateway package first on the path."""
    settings = {declared.variable for declared in declarations()}
    env = {name: value for name, value in os.environ.items() if name not in settings}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PACKAGE_ROOT), env.get("PYTHONPATH"))))
    return env


async def _read(process: asyncio.subprocess.Process, output: Output) -> None:
    assert process.stdout is not None
    async for raw in process.stdout:
        output.take(raw.decode(errors="replace").rstrip())
    await process.wait()
    output.ended.set()


async def _answering(url: str, output: Output) -> None:
    """Wait until the gateway answers /health (DemoError if it ends or takes too long)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while not output.ended.is_set():
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise DemoError(f"the gateway did not answer at {url} in {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)
    raise DemoError(f"the gateway did not start: {output.last_line()}")
