"""python -m aigateway.bench: throughput, latency and memory, gateway against the floor.

Four processes serve on loopback: the fake Ollama, the floor (a bare aiohttp
pass-through), and the gateway as `python -m aigateway` runs it, twice: the core (keys,
the access log, usage records), the same with per-key limits on every request, and the
same with billing (prices on every model, a budget on the key and on its user); and,
where PostgreSQL is installed, a third time with limits on PostgreSQL (a server the
benchmark starts), whose round trips per request it counts from pg_stat_statements, and
which it then measures against SQLite once more with the database on a CPU of its own. This
process is the load: N connections, each sending a request as soon as the previous
answer is complete. In each round floor and gateways are measured back to back, taking
turns at going first, and each ratio is the median of the ratios within a round, so
drift on a shared machine between rounds does not enter it. Besides requests/s and
latency it prints each proxy's own CPU time per request (from /proc), which does not
depend on how much CPU the load generator took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from ..server import new_event_loop, raise_open_file_limit
from ..testing.pgserver import PostgresServer, PostgresUnavailable
from ..testing.ports import free_port
from . import paired
from .harness import BILLING_SETUP, LIMITS, Run, Target, load, make_key, rss_mb, started, wait_ready

STREAM = b'{"model":"stall","prompt":"hold this stream open"}'


async def open_streams(target: Target, count: int) -> float:
    """Hold `count` streams open through the target; return its RSS growth in MB."""
    await asyncio.sleep(0.5)
    idle = rss_mb(target.process.pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=target.headers) as session:
        release, all_open = asyncio.Event(), asyncio.Event()
        opened = 0

        async def hold() -> None:
            nonlocal opened
            async with session.post(target.url + "/api/generate", data=STREAM) as resp:
                await resp.content.readline()
                opened += 1
                if opened == count:
                    all_open.set()
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), timeout=60)
        await asyncio.sleep(0.5)
        held = rss_mb(target.process.pid)
        if opened < count:
            print(f"  ({target.name}: only {opened} of {count} streams opened)")
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return held - idle


FLOOR, CORE, FULL, BILLING, POSTGRES = "floor", "gateway", "gw+limits", "gw+billing", "pg+limits"
# Three upstreams (the fake Ollama on three ports), and the same with the third refusing
# connections (its port closed): requests sent there fail over.
THREE, ONE_DEAD = "gw+3up", "3up-1dead"
# The same limits as a key's own (the PostgreSQL gateway has no defaults, so that one of
# its keys can have none: the round trips of both kinds are counted).
KEY_LIMITS = ("--rpm", LIMITS["DEFAULT_RPM"], "--rph", LIMITS["DEFAULT_RPH"],
              "--tokens-per-day", LIMITS["DEFAULT_TOKENS_PER_DAY"])  # fmt: skip
# Statements a request waits for: its admission (one call for all the requests of a key
# that arrived while the previous one was out), and a token top-up, or for a key with a
# budget the top-up and the budget reservation in one call.
WAITED = (
    "%aigateway_admit(%",
    "%UPDATE limit_counters SET day_reserved = day_reserved +%",
    "%aigateway_body_reserve(%",
)


def billing_database(work: Path) -> None:
    """tokens-billing.db: the key database with prices and budgets."""
    shutil.copy(work / "tokens.db", work / "tokens-billing.db")
    for setup in BILLING_SETUP:
        subprocess.run(
            [sys.executable, "-m", "aigateway.cli.flags", *setup,
             "--db", str(work / "tokens-billing.db")],
            check=True,
            capture_output=True,
        )  # fmt: skip


@contextmanager
def postgres_database(work: Path) -> Iterator[tuple[PostgresServer, str] | None]:
    """A PostgreSQL server of the benchmark's own and the URL of its database, or None
    where PostgreSQL is not installed (the figure is then left out)."""
    try:
        server = PostgresServer().start()
    except (PostgresUnavailable, RuntimeError) as exc:
        print(f"  (no PostgreSQL configuration: {exc})")
        yield None
        return
    try:
        server.sql("CREATE DATABASE bench")
        url = server.url("bench")
        if server.has_statement_statistics:
            server.sql("CREATE EXTENSION pg_stat_statements", "bench")
        yield server, url
    finally:
        server.close()


@contextmanager
def database_on_its_own_core(server: PostgresServer, pids: list[int]) -> Iterator[bool]:
    """PostgreSQL's processes on one CPU and `pids` (every thread of each) on the others,
    as if the database had a machine of its own, as it has where several gateways share
    it; afterwards all may run anywhere again. False (nothing changed) on one CPU."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        yield False
        return

    def pin(pid: int, where: set[int]) -> None:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):  # (a thread gone meanwhile)
                os.sched_setaffinity(int(task.name), where)

    try:
        for pid in server.processes():  # backends started later inherit the postmaster's
            pin(pid, {cpus[-1]})
        for pid in pids:
            pin(pid, set(cpus[:-1]))
        yield True
    finally:
        for pid in [*server.processes(), *pids]:
            pin(pid, set(cpus))


def round_trips(server: PostgresServer, requests: int) -> tuple[float, float]:
    """(statements each relayed request waited for, all statements per request) since
    the last reset, by the server's own count."""
    waited = sum(server.statement_calls("bench", like) for like in WAITED)
    everything = server.statement_calls("bench", "%")
    return waited / max(requests, 1), everything / max(requests, 1)


async def bench(args: argparse.Namespace, work: Path, key: str) -> int:
    raise_open_file_limit()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    up_port, floor_port, core_port, full_port, bill_port, pg_port = (free_port() for _ in range(6))
    up2_port, up3_port, three_port, dead_port, one_dead_port = (free_port() for _ in range(5))
    upstream_url = f"http://127.0.0.1:{up_port}"
    ports3 = (up_port, up2_port, up3_port)
    three_urls = [f"http://127.0.0.1:{port}" for port in ports3]
    dead_url = f"http://127.0.0.1:{dead_port}"  # nothing listens there
    # One key database each, so the two gateways' usage writers do not queue for one file.
    shutil.copy(work / "tokens.db", work / "tokens-limits.db")

    def gateway_env(port: int, db: str, extra: dict[str, str]) -> dict[str, str]:
        return {
            **env,
            "OLLAMA_BASE_URL": upstream_url,
            "PORT": str(port),
            "TOKEN_DB_PATH": str(work / db),
            "LOG_LEVEL": os.environ.get("BENCH_GATEWAY_LOG_LEVEL", "INFO"),
            "LOG_FILE": "",
            **extra,
        }

    gateway_cmd = [py, "-m", "aigateway", "--env-file", str(work / "none.env")]
    floor_cmd = [py, "-m", "aigateway.bench.floor", "--port", str(floor_port)]
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(
            started(
                # the three upstreams' ports served by the one fake process, so that the
                # fake's share of the two cores is the same for one upstream and for three
                [py, "-m", "aigateway.testing.fake_ollama", "--port", *map(str, ports3)],
                env,
                work / "upstream.log",
            )
        )
        floor = stack.enter_context(
            started([*floor_cmd, "--upstream", upstream_url], env, work / "floor.log")
        )
        core = stack.enter_context(
            started(gateway_cmd, gateway_env(core_port, "tokens.db", {}), work / "core.log")
        )
        full = stack.enter_context(
            started(
                gateway_cmd, gateway_env(full_port, "tokens-limits.db", LIMITS), work / "full.log"
            )
        )
        billing = stack.enter_context(
            started(
                gateway_cmd, gateway_env(bill_port, "tokens-billing.db", {}), work / "billing.log"
            )
        )
        shutil.copy(work / "tokens.db", work / "tokens-3up.db")
        shutil.copy(work / "tokens.db", work / "tokens-1dead.db")
        three = stack.enter_context(
            started(
                gateway_cmd,
                gateway_env(three_port, "tokens-3up.db", {"OLLAMA_BASE_URL": ",".join(three_urls)}),
                work / "three.log",
            )
        )
        one_dead = stack.enter_context(
            started(
                gateway_cmd,
                gateway_env(
                    one_dead_port,
                    "tokens-1dead.db",
                    {"OLLAMA_BASE_URL": ",".join([*three_urls[:2], dead_url])},
                ),
                work / "one-dead.log",
            )
        )
        await wait_ready(upstream_url + "/", upstream)
        auth = {"Authorization": f"Bearer {key}"}
        targets = [
            Target(FLOOR, f"http://127.0.0.1:{floor_port}", floor, {}),
            Target(CORE, f"http://127.0.0.1:{core_port}", core, auth),
            Target(FULL, f"http://127.0.0.1:{full_port}", full, auth),
            Target(BILLING, f"http://127.0.0.1:{bill_port}", billing, auth),
            Target(THREE, f"http://127.0.0.1:{three_port}", three, auth),
            Target(ONE_DEAD, f"http://127.0.0.1:{one_dead_port}", one_dead, auth),
        ]
        postgres = stack.enter_context(postgres_database(work))
        free_key = ""
        if postgres is not None:
            server, url = postgres
            limited_key = make_key(url, *KEY_LIMITS)
            free_key = make_key(url, "--rpm", "0")  # no limits: no round trip
            pg_env = gateway_env(pg_port, "unused.db", {"DATABASE_URL": url})
            pg = stack.enter_context(started(gateway_cmd, pg_env, work / "postgres.log"))
            limited = {"Authorization": f"Bearer {limited_key}"}
            targets.append(Target(POSTGRES, f"http://127.0.0.1:{pg_port}", pg, limited))
        for target in targets:
            await wait_ready(target.url + "/", target.process)

        results: dict[tuple[str, int], list[Run]] = {}
        for round_no in range(args.rounds):
            turn = round_no % len(targets)  # each takes its turn at going first
            order = targets[turn:] + targets[:turn]
            for connections in (1, 32):
                for target in order:
                    run = await load(target, connections, args.seconds, "/api/chat")
                    results.setdefault((target.name, connections), []).append(run)
            print(f"  round {round_no + 1}/{args.rounds} done", flush=True)

        def median(name: str, connections: int) -> Run:
            runs = sorted(results[(name, connections)], key=lambda r: r.rps)
            return runs[len(runs) // 2]

        print()
        print(
            f"POST /api/chat (stream=false), {args.seconds:g} s x {args.rounds} rounds;"
            " the median round of each"
        )
        print(f"{'':<10}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}")
        for connections in (1, 32):
            for target in targets:
                r = median(target.name, connections)
                print(
                    f"{target.name:<10}{connections:>6}{r.rps:>10.0f}{r.pct(0.5):>9.2f}"
                    f"{r.pct(0.99):>9.2f}{r.cpu_us_per_request:>12.0f}"
                )

        trips: list[tuple[str, float, float, float]] = []
        if postgres is not None and postgres[0].has_statement_statistics:
            server = postgres[0]
            pg_target = targets[-1]
            for what, headers in (
                ("key with limits", pg_target.headers),
                ("key without limits", {"Authorization": f"Bearer {free_key}"}),
            ):
                measured = Target(POSTGRES, pg_target.url, pg_target.process, headers)
                await load(measured, 32, 0.5, "/api/chat")  # warm, before the count
                await asyncio.sleep(0.5)  # what the warm-up gives back is written
                server.sql("SELECT pg_stat_statements_reset()", "bench")
                cpu_before = server.cpu_seconds()
                run = await load(measured, 32, args.seconds, "/api/chat")
                requests = run.requests + 32 * 5
                server_cpu = (server.cpu_seconds() - cpu_before) / requests * 1e6
                # Counted before the batches catch up with the last requests: the share
                # of all statements is a little low, the waited-for ones are exact.
                trips.append((what, *round_trips(server, requests), server_cpu))

        # PostgreSQL against SQLite once more, the database on a CPU of its own: on this
        # machine it otherwise takes its CPU from the gateway's, the fake Ollama's and
        # this load's, which a database on its own machine (several gateways) does not.
        own_core: list[tuple[Run, Run]] = []  # (SQLite, PostgreSQL), both with limits
        if postgres is not None:
            sqlite_target = next(t for t in targets if t.name == FULL)
            pg_target = targets[-1]
            pids = [upstream.pid, full.pid, pg_target.process.pid, os.getpid()]
            with database_on_its_own_core(postgres[0], pids) as pinned:
                for round_no in range(args.rounds if pinned else 0):
                    pair = [sqlite_target, pg_target][:: 1 if round_no % 2 == 0 else -1]
                    runs = {}
                    for target in pair:
                        runs[target.name] = await load(target, 32, args.seconds, "/api/chat")
                    own_core.append((runs[FULL], runs[POSTGRES]))
            if own_core:
                print()
                print(
                    f"with limits, PostgreSQL on a CPU of its own, 32 conns (median round):"
                    f" SQLite {statistics.median(s.rps for s, _ in own_core):.0f} req/s,"
                    f" PostgreSQL {statistics.median(p.rps for _, p in own_core):.0f} req/s"
                )

        memory = {t.name: await open_streams(t, args.streams) for t in targets}
        print()
        print(
            f"{args.streams} open streams, resident over idle: "
            + ", ".join(f"{name} +{mb:.1f} MB" for name, mb in memory.items())
        )

        def paired(
            name: str, connections: int, figure: Callable[[Run], float], against: str = FLOOR
        ) -> list[float]:
            """name/against within each round: the two ran back to back, so a round's
            ratio is free of the drift between rounds."""
            pairs = zip(results[(name, connections)], results[(against, connections)], strict=True)
            return [figure(g) / figure(f) for g, f in pairs]

        def rps(r: Run) -> float:
            return r.rps

        def p50(r: Run) -> float:
            return r.pct(0.5)

        def cpu(r: Run) -> float:
            return r.cpu_us_per_request

        # (what, per-round ratios, the target's test or None, the target as text)
        checks: list[tuple[str, list[float], Callable[[float], bool] | None, str]] = [
            ("throughput, 32 conns", paired(CORE, 32, rps), lambda x: x >= 0.9, ">= 0.9x"),
            ("p50 latency, 1 conn", paired(CORE, 1, p50), lambda x: x <= 1.1, "<= 1.1x"),
            ("proxy CPU/request, 32", paired(CORE, 32, cpu), None, ""),
            ("+limits throughput, 32", paired(FULL, 32, rps), lambda x: x >= 0.85, ">= 0.85x"),
            ("+limits p50 latency, 1", paired(FULL, 1, p50), None, ""),
            ("+limits CPU/request, 32", paired(FULL, 32, cpu), None, ""),
            (
                "billing/core throughput, 32",
                paired(BILLING, 32, rps, against=CORE),
                lambda x: x >= 0.95,
                ">= 0.95x",
            ),
            ("billing/core CPU/req, 32", paired(BILLING, 32, cpu, against=CORE), None, ""),
            (
                "3 upstreams/1, throughput 32",
                paired(THREE, 32, rps, against=CORE),
                lambda x: x >= 0.95,
                ">= 0.95x",
            ),
            ("3 upstreams/1, CPU/req 32", paired(THREE, 32, cpu, against=CORE), None, ""),
        ]
        if postgres is not None:
            checks += [
                ("pg/sqlite throughput, 32", paired(POSTGRES, 32, rps, against=FULL), None, ""),
                ("pg/sqlite p50 latency, 1", paired(POSTGRES, 1, p50, against=FULL), None, ""),
                ("pg/sqlite CPU/request, 32", paired(POSTGRES, 32, cpu, against=FULL), None, ""),
            ]
        if own_core:
            checks.append(
                (
                    "pg/sqlite, db own CPU, 32",
                    [pg.rps / lite.rps for lite, pg in own_core],
                    lambda x: x >= 0.85,
                    ">= 0.85x",
                )
            )
        print()
        print("ratios: the median of the ratios within each round (each round's);")
        print(
            "against the floor; billing against the core gateway; PostgreSQL's gateway"
            " against SQLite's, both with limits"
        )
        passed = True
        for what, ratios, test, goal in checks:
            middle = statistics.median(ratios)
            verdict = " " * 22
            if test is not None:
                ok = test(middle)
                passed = passed and ok
                verdict = f"target {goal:<8} {'ok' if ok else 'MISSED':<6}"
            each = " ".join(f"{r:.2f}" for r in ratios)
            print(f"  {what:<26} {middle:.3f}x  {verdict} ({each})")
        # One of three refusing connections: what the requests sent to it first (failed
        # over) added, as the worst request against the healthy three's worst, 1 connection.
        added = [
            (dead.pct(1.0) - healthy.pct(1.0))
            for dead, healthy in zip(results[(ONE_DEAD, 1)], results[(THREE, 1)], strict=True)
        ]
        worst_added = statistics.median(added)
        ok = worst_added < 50
        passed = passed and ok
        print(
            f"  {'1 of 3 refusing, added':<26} {worst_added:+.2f} ms slowest request"
            f" (median of rounds)  target < 50 ms  {'ok' if ok else 'MISSED'}"
            f" ({' '.join(f'{a:+.1f}' for a in added)})"
        )
        for name in (CORE, FULL):
            ok = memory[name] <= 60
            passed = passed and ok
            print(
                f"  {name + ', ' + str(args.streams) + ' streams':<26} +{memory[name]:.1f} MB"
                f"  target <= 60 MB  {'ok' if ok else 'MISSED'}"
            )
        if trips:
            print()
            print("PostgreSQL statements per relayed request (pg_stat_statements):")
            for what, waited, everything, server_cpu in trips:
                most = 1 if what == "key with limits" else 0
                ok = waited <= most + 0.01
                passed = passed and ok
                print(
                    f"  {what:<20} waited for {waited:.3f} (target <= {most}:"
                    f" {'ok' if ok else 'MISSED'}), all statements {everything:.3f},"
                    f" server CPU {server_cpu:.0f} us/request"
                )
        del upstream
        return 0 if passed or not args.strict else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aigateway.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Many short rounds: on a shared machine a round's figures swing by 10% or more, and
    # the median of many pairs is steadier than that of a few long ones.
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=15, help="rounds per figure")
    parser.add_argument("--streams", type=int, default=1000, help="open streams for memory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    if any(arg == "--against" or arg.startswith("--against=") for arg in sys.argv[1:]):
        paired.main(sys.argv[1:])  # this tree against another: a paired comparison
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aigateway-bench-") as tmp:
        loop = new_event_loop()
        try:
            key = make_key(Path(tmp) / "tokens.db")
            billing_database(Path(tmp))
            code = loop.run_until_complete(bench(args, Path(tmp), key))
        finally:
            loop.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
