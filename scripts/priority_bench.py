#!/usr/bin/env python3
"""What priorities do for an interactive key under a batch flood: its time to first byte
through a gateway whose one upstream (a slow fake Ollama) takes MAX_CONCURRENT requests
at once, while batch keys keep FLOOD requests each waiting, with every key normal and
with the interactive key high.

    .venv/bin/python scripts/priority_bench.py [--batch-keys 8] [--flood 4] [--samples 20]

Fake Ollama and gateway are real servers on loopback in this process (the waits measured
are the queue's, tenths of a second, far above what sharing a CPU adds). Without
priorities the fair queue serves the interactive key in turn with every batch key (about
one answer's time per batch key); with it high, it waits only for the next slot to free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import upstreams_from_file

CHAT = b'{"model":"slow","messages":[{"role":"user","content":"hi"}]}'


async def serve(app: web.Application, stack: contextlib.AsyncExitStack) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}"


async def first_byte(session: aiohttp.ClientSession, url: str, key: str) -> float:
    """Seconds from sending a chat to its first body byte; the rest is read to the end."""
    start = time.perf_counter()
    async with session.post(url, data=CHAT, headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.content.readany()
        took = time.perf_counter() - start
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
    return took


async def scenario(args: argparse.Namespace, work: Path, interactive: str) -> list[float]:
    """The interactive key's times to first byte, its class `interactive`."""
    db = str(work / f"{interactive}.db")
    store = await Store.open(db, create=True)
    try:
        batch = [(await store.create_key(f"batch{n}", "job"))[1] for n in range(args.batch_keys)]
        _, chat = await store.create_key("ann", "chat", priority=interactive)
    finally:
        await store.close()
    async with contextlib.AsyncExitStack() as stack:
        fake = FakeOllama(slow_interval=args.interval)
        upstream = await serve(fake.app(), stack)
        toml = work / "upstreams.toml"
        toml.write_text(
            f'[[upstream]]\nname = "gpu"\nurl = "{upstream}"\n'
            f"max_concurrent = {args.max_concurrent}\n"
        )
        settings = Settings(
            token_db_path=db,
            upstreams=upstreams_from_file(str(toml), {}),
            upstream_queue_timeout=300.0,
        )
        gateway = await serve(create_app(settings), stack) + "/api/chat"
        connector = aiohttp.TCPConnector(limit=0)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        stop = asyncio.Event()

        async def flood(key: str) -> None:
            while not stop.is_set():
                await first_byte(session, gateway, key)

        workers = [asyncio.create_task(flood(key)) for key in batch for _ in range(args.flood)]
        await asyncio.sleep(1.0)  # the queue fills
        times = []
        for _ in range(args.samples):
            times.append(await first_byte(session, gateway, chat))
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    figures = (("median", statistics.median(ordered)), ("p90", p90), ("max", ordered[-1]))
    return "   ".join(f"{name} {value * 1000:6.0f} ms" for name, value in figures)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-keys", type=int, default=8, help="keys flooding")
    parser.add_argument("--flood", type=int, default=4, help="requests at once per batch key")
    parser.add_argument("--max-concurrent", type=int, default=2, help="the upstream's")
    parser.add_argument("--interval", type=float, default=0.01, help="fake Ollama's line pace")
    parser.add_argument("--samples", type=int, default=20, help="interactive requests")
    args = parser.parse_args()
    print(
        f"{args.batch_keys} batch keys x {args.flood} requests at once; one upstream taking"
        f" {args.max_concurrent} at a time; interactive key's time to first byte:"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, interactive in (
            ("without priorities (normal)", "normal"),
            ("with priorities (high)", "high"),
        ):
            times = await scenario(args, Path(tmp), interactive)
            print(f"  {label:28} {summary(times)}")


if __name__ == "__main__":
    asyncio.run(main())
