#!/usr/bin/env python3
"""What traces cost, counted rather than timed: the instructions (callgrind's Ir) the
gateway process executes per relayed request, with traces off and with every request
traced (exported over OTLP/HTTP to a receiver on loopback, the batch thread counted: it
is the same process), for this tree and optionally REF's.

    .venv/bin/python scripts/traces_callgrind.py [--against main] [--requests 512]

Each gateway runs under `valgrind --tool=callgrind` with instrumentation off while it
starts and warms up (`--warmup` requests); then counting starts, a fixed number of
`POST /api/chat` requests is sent by a small client (`--connections` at a time), the
batch thread is given a moment to export, and the counts are dumped. Instruction counts
do not depend on what else the machine runs, unlike CPU time (scripts/traces_cost.py).
The batch size is set so that the traced requests' spans make whole batches. (`-P`: the
gateway imports its tree from PYTHONPATH, not from the folder this runs in.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from aigateway.bench.harness import CHAT, started, wait_ready
from aigateway.bench.paired import ROOT, checkout, database, gateway_env, tree_env
from aigateway.testing.ports import free_port

SPANS_PER_REQUEST = 4  # a streamed chat's: the request, admission, upstream, stream


def sink(port: int) -> None:
    """An OTLP/HTTP receiver that takes every export and keeps nothing."""
    from aiohttp import web

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def send(url: str, key: str, count: int, connections: int) -> None:
    """`count` chats, `connections` at a time, each answered 200."""
    left = count
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url + "/api/chat", data=CHAT) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"callgrind: answered {resp.status}")

        await asyncio.gather(*(worker() for _ in range(connections)))


def control(pid: int, *what: str) -> None:
    subprocess.run(["callgrind_control", *what, str(pid)], check=True, capture_output=True)


def dumped_ir(out: Path) -> list[int]:
    """The instructions of each thread in the dump `callgrind_control --dump` asked for
    (its files end `.1-NN`, one a thread; the others are written at exit), once written."""
    for _ in range(600):
        figures = []
        for dump in sorted(out.parent.glob(out.name + ".1-*")):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    figures.append(int(line.split()[1]))
                    break
            else:
                break  # (still being written)
        else:
            if figures:
                return figures
        time.sleep(0.1)
    raise SystemExit(f"callgrind: no whole dump beside {out}")


async def measure_one(
    side: str, tree: Path, traced: bool, upstream_url: str, sink_port: int, args: argparse.Namespace
) -> float:
    place = Path(args.work) / side
    place.mkdir(parents=True)
    db, key = database(tree, place, "core")
    port = free_port()
    env = gateway_env(tree, upstream_url, port, db)
    if traced:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
        env["OTEL_TRACES_SAMPLER"] = "always_on"
        env["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = str(args.batch * SPANS_PER_REQUEST)
        env["OTEL_BSP_MAX_QUEUE_SIZE"] = str(4 * args.batch * SPANS_PER_REQUEST)
    out = place / "callgrind.out"
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable, "-P", "-m", "aigateway", "--env-file", str(place / "none.env"),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with started(cmd, env, place / "gateway.log") as process:
        await wait_ready(url + "/", process)
        await send(url, key, args.warmup, args.connections)
        await asyncio.sleep(1)  # (the warm-up's last export)
        control(process.pid, "--instr=on")
        control(process.pid, "--zero")
        await send(url, key, args.requests, args.connections)
        await asyncio.sleep(2)  # (the batch thread exports the last whole batch)
        control(process.pid, "--dump")
        threads = dumped_ir(out)
    count: int = args.requests
    per_request = sum(threads) / count
    each = ", ".join(f"{ir / count:,.0f}" for ir in threads if ir)
    print(f"  {side:<12} {per_request:12,.0f} instructions a request (threads: {each})")
    return per_request


async def measure(args: argparse.Namespace) -> None:
    work = Path(args.work)
    trees = {"this": ROOT}
    if args.against:
        commit = checkout(args.against, work / "ref-tree")
        trees["ref"] = work / "ref-tree"
        print(f"REF: {args.against} ({commit[:12]})")
    up_port, sink_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    with contextlib.ExitStack() as stack:
        fake_cmd = [sys.executable, "-m", "aigateway.testing.fake_ollama", "--port", str(up_port)]
        upstream = stack.enter_context(started(fake_cmd, tree_env(ROOT), work / "fake.log"))
        sink_cmd = [sys.executable, __file__, "--sink", str(sink_port)]
        stack.enter_context(started(sink_cmd, tree_env(ROOT), work / "sink.log"))
        await wait_ready(upstream_url + "/", upstream)
        figures: dict[str, float] = {}
        for name, tree in trees.items():
            for traced in (False, True):
                side = f"{name}/{'traced' if traced else 'off'}"
                figures[side] = await measure_one(
                    side.replace("/", "-"), tree, traced, upstream_url, sink_port, args
                )
    print(f"\nPOST /api/chat, {args.requests} requests after {args.warmup}, "
          f"{args.connections} connections:")  # fmt: skip
    for name in trees:
        off, on = figures[f"{name}/off"], figures[f"{name}/traced"]
        print(f"  {name}: off {off:,.0f}, traced {on:,.0f}: {on / off:.3f}x")
    if "ref" in trees:
        print(f"  this off / ref off: {figures['this/off'] / figures['ref/off']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", default="", help="also measure this commit's tree")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=256)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128, help="requests a batch of spans")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink is not None:
        sink(args.sink)
        return
    with tempfile.TemporaryDirectory(prefix="aigateway-callgrind-") as tmp:
        args.work = args.work or tmp
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
