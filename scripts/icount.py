#!/usr/bin/env python3
"""Instructions per relayed request, tree A against tree B: a figure that does not move
with the machine's load, unlike CPU time.

    .venv/bin/python scripts/icount.py REF_A REF_B [--config limits,core] [--pairs 2]
        [--n 400] [--warmup 100] [--keep DIR]

REF_A and REF_B are git refs of this repository (a branch, a tag, a commit: its tree as
committed) or paths to trees (a worktree, with what is not committed yet). Each
measurement starts that tree's gateway (`python -m aigateway`, a fresh key database made
by its own CLI, the bench's settings for the configuration: aigateway/bench/paired.py)
under valgrind's callgrind, in front of one fake Ollama; sends `--warmup` requests
(POST /api/chat, stream=false, one keep-alive connection, one after another), then
counts the instructions of every thread of the gateway over the next `--n` requests
(callgrind_control zeroes the counts before them and dumps them after). Collection is
off until then, so start-up and the warm-up cost only valgrind's slower pace.

The usage flush and the key table's poll are stretched to an hour, so the timers that
fire by the clock (and under valgrind's pace fire after a varying number of requests)
do not enter the count: what is counted is the work each request does itself. A and B
take turns at going first in each pair of runs; the figure is each side's median, and
the ratio B/A is the median of the ratios within each pair.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigateway.bench.harness import CHAT, LIMITS, started  # noqa: E402
from aigateway.bench.paired import (  # noqa: E402
    CONFIGS,
    PYTHON,
    checkout,
    database,
    gateway_env,
    tree_env,
)
from aigateway.testing.ports import free_port  # noqa: E402

# Run in the gateway's process: the clock-driven timers stretched (see above), then the
# server as `python -m aigateway` starts it. A tree without these modules runs unstretched.
STRETCHED = """
import sys
try:
    from aigateway.access import keytable
    from aigateway.usage import writer
    writer.FLUSH_INTERVAL_S = keytable.RELOAD_INTERVAL_S = 3600.0
except (ImportError, AttributeError) as exc:
    print("icount: timers not stretched:", exc, file=sys.stderr)
from aigateway.__main__ import main
sys.argv[0] = "aigateway"
main()
"""
STARTUP_S = 600  # python's imports under valgrind take a while on a busy machine


def tree_of(ref: str, work: Path, label: str) -> tuple[Path, str]:
    """The tree to run for `ref` (a path as it is, else the ref's commit unpacked); how
    to name it."""
    path = Path(ref)
    if path.is_dir():
        return path.resolve(), str(path)
    commit = checkout(ref, work / label)
    return work / label, f"{ref} ({commit[:12]})"


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            raise SystemExit(f"icount: the server on port {port} exited at start")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"icount: the server on port {port} did not start") from None
            time.sleep(0.5)


def send(conn: http.client.HTTPConnection, key: str, count: int) -> None:
    # (A User-Agent as every client library sends: without one the relay asks aiohttp
    # not to make one up, a path of its own.)
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "User-Agent": "icount",
    }
    for _ in range(count):
        conn.request("POST", "/api/chat", body=CHAT, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"icount: the gateway answered {response.status}")


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def instructions(out: Path) -> int:
    """The instructions counted in the dumps callgrind_control asked for: `out`.1 (with
    one a thread if --separate-threads were given); not `out` itself, which the process
    writes at its end."""
    total = 0
    for dump in out.parent.glob(out.name + ".*"):
        for line in dump.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                total += int(line.split()[1])
                break
    return total


def keep_dumps(place: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for dump in place.glob("callgrind.out*"):
        shutil.copy(dump, into / dump.name)


def measure(
    tree: Path, config: str, upstream_url: str, args: argparse.Namespace, place: Path
) -> float:
    """Instructions per request of `tree`'s gateway in `config`, counted once."""
    place.mkdir(parents=True)
    db, key = database(tree, place, config)
    port = free_port()
    env = gateway_env(tree, upstream_url, port, db)
    env["PYTHONHASHSEED"] = "0"
    if config == "limits":
        env.update(LIMITS)
    out = place / "callgrind.out"
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        *PYTHON, "-c", STRETCHED, "--env-file", str(place / "none.env"),
    ]  # fmt: skip
    with started(cmd, env, place / "gateway.log") as process:
        wait_ready(port, process)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        send(conn, key, args.warmup)
        callgrind_control("--instr=on", process.pid)
        callgrind_control("--zero", process.pid)
        send(conn, key, args.n)
        callgrind_control("--dump", process.pid)
        conn.close()
        counted = instructions(out)
    if not counted:
        raise SystemExit(f"icount: no callgrind dump in {place}")
    return counted / int(args.n)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", metavar="REF_A", help="a git ref of this repository, or a tree")
    parser.add_argument("b", metavar="REF_B", help="the other")
    parser.add_argument("--config", default="limits", help=f"some of {','.join(CONFIGS)}")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--n", type=int, default=400, help="requests counted per run")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting")
    parser.add_argument(
        "--keep", type=Path, help="copy each run's callgrind dumps here (for callgrind_annotate)"
    )
    args = parser.parse_args()
    configs = [c.strip() for c in args.config.split(",") if c.strip()]
    if not configs or set(configs) - set(CONFIGS):
        raise SystemExit(f"icount: --config takes some of {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="aigateway-icount-") as tmp:
        work = Path(tmp)
        trees = {"A": tree_of(args.a, work, "A"), "B": tree_of(args.b, work, "B")}
        for side, (_, name) in trees.items():
            print(f"{side}: {name}", flush=True)
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        with contextlib.ExitStack() as stack:
            fake = [sys.executable, "-m", "aigateway.testing.fake_ollama", "--port", str(up_port)]
            upstream = stack.enter_context(started(fake, tree_env(ROOT), work / "fake.log"))
            wait_ready(up_port, upstream)
            for config in configs:
                counts: dict[str, list[float]] = {"A": [], "B": []}
                for pair in range(args.pairs):
                    for side in ("A", "B") if pair % 2 == 0 else ("B", "A"):
                        place = work / config / f"{side}{pair}"
                        count = measure(trees[side][0], config, upstream_url, args, place)
                        counts[side].append(count)
                        if args.keep is not None:
                            keep_dumps(place, args.keep / config / f"{side}{pair}")
                        print(f"  {config} pair {pair + 1} {side}: {count:,.0f}", flush=True)
                ratios = [b / a for a, b in zip(counts["A"], counts["B"], strict=True)]
                print(
                    f"{config}: instructions per request, median of {args.pairs}:"
                    f" A {statistics.median(counts['A']):,.0f},"
                    f" B {statistics.median(counts['B']):,.0f};"
                    f" B/A {statistics.median(ratios):.4f}"
                    f" ({' '.join(f'{r:.4f}' for r in ratios)})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
