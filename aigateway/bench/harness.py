"""What every benchmark here shares: a run's figures, the processes it starts, and the load
(N connections, each sending a request as soon as the previous answer is complete)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The gateway is measured as the core (keys, the access log, usage records), and with
# per-key limits on every request (set high enough never to refuse, so each request is
# checked, counted and answered with X-RateLimit-*).
LIMITS = {
    "DEFAULT_RPM": "100000000",
    "DEFAULT_RPH": "1000000000",
    "DEFAULT_TOKENS_PER_DAY": "1000000000000",
}
# Billing: every model priced per request and per token, and budgets on the key and its
# user (far above what a run spends), so every request is priced, checked against both
# budgets, reserves and settles.
BILLING_SETUP = (
    ("--set-price", "*", "--per-request", "0.000001", "--per-million-input", "0.10",
     "--per-million-output", "0.40"),
    ("--set-user", "bench", "--budget", "1000000000", "--period", "monthly"),
    ("--set", "bench", "load0", "--budget", "1000000000", "--period", "daily"),
)  # fmt: skip


@dataclass
class Run:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    headers: dict[str, str]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def started(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"bench: {url} exited with {process.returncode} at start")
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {url} did not start") from None
                await asyncio.sleep(0.1)


async def load(target: Target, connections: int, seconds: float, path: str) -> Run:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector, headers=target.headers) as session:
        url = target.url + path

        async def one() -> None:
            async with session.post(url, data=CHAT) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"bench: {target.name} answered {resp.status}")

        for _ in range(connections * 5):  # warm connections and caches
            await one()
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                began = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - began)

        cpu_before = cpu_seconds(target.process.pid)
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(target.process.pid) - cpu_before
    return Run(len(latencies), elapsed, latencies, cpu)


def make_key(db: Path | str, *limits: str, env: Mapping[str, str] | None = None) -> str:
    """A key made by the CLI in `db` (a SQLite path or a DATABASE_URL); `env` chooses
    whose CLI (a PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-m", "aigateway.cli.flags", "-g", "bench", f"load{len(limits)}",
         *limits, "--db", str(db)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()  # fmt: skip
