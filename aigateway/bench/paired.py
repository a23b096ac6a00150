"""`./run.sh bench --against REF`: this tree's gateway against REF's, paired.

Both trees' gateways run as `python -m aigateway` in front of one fake Ollama, each with
a key database made by its own CLI, in the same configurations: the core (keys, access
log, usage records), with per-key limits, and with billing (prices on every model, a
budget on the key and on its user). In each round every configuration is measured on
both trees back to back, the two taking turns at going first, and each figure is the
median of the per-round ratios (this tree over REF), so drift on a shared machine between
rounds does not enter it. "Within 3%" is then one command anyone can repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..server import new_event_loop
from ..testing.ports import free_port
from .harness import BILLING_SETUP, LIMITS, Run, Target, load, make_key, started, wait_ready

ROOT = Path(__file__).resolve().parents[2]  # this tree (a checkout, not an installed copy)
CONFIGS = ("core", "limits", "billing")
WITHIN = 0.03  # the bar: throughput and CPU per request within 3%


def checkout(ref: str, into: Path) -> str:
    """REF's tree (as committed) unpacked into `into`; its commit id."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"bench: {ref!r} is not a commit of {ROOT}: {exc}") from None
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m aigateway` import `tree`'s package."""
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}


def gateway_env(tree: Path, upstream_url: str, port: int, db: Path) -> dict[str, str]:
    """The environment of `tree`'s gateway on `port` in front of `upstream_url`, with the
    key database `db`, logging only warnings (and no OTEL_* of the caller's: no traces)."""
    return {
        **{k: v for k, v in tree_env(tree).items() if not k.startswith("OTEL_")},
        "OLLAMA_BASE_URL": upstream_url,
        "PORT": str(port),
        "TOKEN_DB_PATH": str(db),
        "LOG_LEVEL": "WARNING",
        "LOG_FILE": "",
    }


def database(tree: Path, work: Path, config: str) -> tuple[Path, str]:
    """A key database for one tree and configuration, made by that tree's own CLI (its
    schema is the one its gateway expects); the key."""
    db = work / f"{config}.db"
    env = tree_env(tree)
    key = make_key(db, env=env)
    if config == "billing":
        for setup in BILLING_SETUP:
            subprocess.run(
                [sys.executable, "-m", "aigateway.cli.flags", *setup, "--db", str(db)],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
    return db, key


async def compare(args: argparse.Namespace, work: Path) -> int:
    ref_tree = work / "ref"
    commit = checkout(args.against, ref_tree)
    trees = {"this": ROOT, "ref": ref_tree}
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown or not configs:
        raise SystemExit(f"bench: --configs takes some of {', '.join(CONFIGS)}")
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    targets: dict[tuple[str, str], Target] = {}
    with contextlib.ExitStack() as stack:
        fake_cmd = [sys.executable, "-m", "aigateway.testing.fake_ollama", "--port", str(up_port)]
        upstream = stack.enter_context(started(fake_cmd, tree_env(ROOT), work / "fake.log"))
        for side, tree in trees.items():
            for config in configs:
                place = work / side / config
                place.mkdir(parents=True)
                db, key = database(tree, place, config)
                port = free_port()
                env = gateway_env(tree, upstream_url, port, db)
                if config == "limits":
                    env.update(LIMITS)
                cmd = [sys.executable, "-m", "aigateway", "--env-file", str(work / "none.env")]
                process = stack.enter_context(started(cmd, env, place / "gateway.log"))
                auth = {"Authorization": f"Bearer {key}"}
                url = f"http://127.0.0.1:{port}"
                targets[(side, config)] = Target(f"{side}/{config}", url, process, auth)
        await wait_ready(upstream_url + "/", upstream)
        for target in targets.values():
            await wait_ready(target.url + "/", target.process)

        results: dict[tuple[str, str, int], list[Run]] = {}
        for round_no in range(args.rounds):
            sides = ["this", "ref"] if round_no % 2 == 0 else ["ref", "this"]
            for config in configs:
                for connections in (32, 1):
                    for side in sides:
                        target = targets[(side, config)]
                        run = await load(target, connections, args.seconds, "/api/chat")
                        results.setdefault((side, config, connections), []).append(run)
            print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
        del upstream

    def cpu(run: Run) -> float:
        return run.cpu_us_per_request

    def ratios(config: str, connections: int, figure: Callable[[Run], float]) -> list[float]:
        mine = results[("this", config, connections)]
        theirs = results[("ref", config, connections)]
        return [figure(m) / figure(t) for m, t in zip(mine, theirs, strict=True)]

    print()
    print(f"this tree ({ROOT}) over {args.against} ({commit[:12]}): POST /api/chat, stream=false,")
    print(f"{args.seconds:g} s runs x {args.rounds} rounds; the median of the per-round ratios")
    passed = True
    for config in configs:
        figures = (
            ("throughput, 32 conns", ratios(config, 32, lambda r: r.rps), 1 - WITHIN, ">="),
            ("CPU/request, 32", ratios(config, 32, cpu), 1 + WITHIN, "<="),
            ("p50 latency, 1 conn", ratios(config, 1, lambda r: r.pct(0.5)), None, ""),
        )
        for what, each, bound, sense in figures:
            middle = statistics.median(each)
            verdict = ""
            if bound is not None:
                ok = middle >= bound if sense == ">=" else middle <= bound
                passed = passed and ok
                verdict = f"within 3%: {'ok' if ok else 'NO'}"
            spread = " ".join(f"{r:.2f}" for r in each)
            print(f"  {config:<8} {what:<22} {middle:.3f}x  {verdict:<15} ({spread})")
    return 0 if passed or not args.strict else 1


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aigateway.bench --against REF",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--against", required=True, help="a commit, branch or tag of this repo")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (pairs) per figure")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {','.join(CONFIGS)}")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure is off")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aigateway-paired-") as tmp:
        loop = new_event_loop()
        try:
            code = loop.run_until_complete(compare(args, Path(tmp)))
        finally:
            loop.close()
    sys.exit(code)
