#!/usr/bin/env python3
"""What traces cost: the gateway's CPU per relayed request with traces off and with every
request traced (OTEL_TRACES_SAMPLER=traceidratio, --ratio 1 by default; exported over
OTLP/HTTP to a receiver on loopback), against REF's tree (default main), in front of one
fake Ollama.

    .venv/bin/python scripts/traces_cost.py [--against main] [--ratio 1] [--rounds 6]

Each round measures the three gateways back to back (in turn going first) at 32
connections on POST /api/chat; each figure is the median of the per-round ratios, so
drift on a shared machine between rounds does not enter it (as `./run.sh bench
--against` does). The bars (docs/traces.md): off within 3% of REF, traced within +15%.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from aigateway.bench.harness import Target, load, started, wait_ready
from aigateway.bench.paired import PYTHON, ROOT, checkout, database, gateway_env, tree_env
from aigateway.testing.ports import free_port

SIDES = ("ref", "off", "traced")


def sink(port: int) -> None:
    """An OTLP/HTTP receiver that takes every export and keeps nothing."""

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def measure(args: argparse.Namespace, work: Path) -> None:
    commit = checkout(args.against, work / "ref")
    trees = {"ref": work / "ref", "off": ROOT, "traced": ROOT}
    up_port, sink_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    with contextlib.ExitStack() as stack:
        fake_cmd = [sys.executable, "-m", "aigateway.testing.fake_ollama", "--port", str(up_port)]
        upstream = stack.enter_context(started(fake_cmd, tree_env(ROOT), work / "fake.log"))
        sink_cmd = [sys.executable, __file__, "--sink", str(sink_port)]
        stack.enter_context(started(sink_cmd, tree_env(ROOT), work / "sink.log"))
        targets: dict[str, Target] = {}
        for side, tree in trees.items():
            place = work / side
            place.mkdir(exist_ok=True)
            db, key = database(tree, place, side)
            port = free_port()
            env = gateway_env(tree, upstream_url, port, db)
            if side == "traced":
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
                env["OTEL_TRACES_SAMPLER"] = "traceidratio"
                env["OTEL_TRACES_SAMPLER_ARG"] = str(args.ratio)
            cmd = [*PYTHON, "-m", "aigateway", "--env-file", str(work / "none.env")]
            process = stack.enter_context(started(cmd, env, place / "gateway.log"))
            headers = {"Authorization": f"Bearer {key}"}
            targets[side] = Target(side, f"http://127.0.0.1:{port}", process, headers)
        await wait_ready(upstream_url + "/", upstream)
        for target in targets.values():
            await wait_ready(target.url + "/", target.process)
        cpu: dict[str, list[float]] = {side: [] for side in SIDES}
        for round_no in range(args.rounds):
            order = SIDES[round_no % 3 :] + SIDES[: round_no % 3]
            for side in order:
                run = await load(targets[side], 32, args.seconds, "/api/chat")
                cpu[side].append(run.cpu_us_per_request)
            print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    print(f"\nCPU per request (µs), POST /api/chat at 32 connections, against {commit[:12]},")
    print(f"traced: a share of {args.ratio:g} of requests")
    for side in SIDES:
        runs = " ".join(f"{c:.0f}" for c in cpu[side])
        print(f"  {side:<7} median {statistics.median(cpu[side]):6.1f}  ({runs})")
    for side in ("off", "traced"):
        ratios = [mine / ref for mine, ref in zip(cpu[side], cpu["ref"], strict=True)]
        spread = " ".join(f"{r:.3f}" for r in ratios)
        print(f"  {side} / ref: median {statistics.median(ratios):.3f}x  ({spread})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", default="main", help="a commit, branch or tag")
    parser.add_argument("--ratio", type=float, default=1.0, help="the share of requests traced")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink is not None:
        sink(args.sink)
        return
    with tempfile.TemporaryDirectory(prefix="aigateway-traces-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
