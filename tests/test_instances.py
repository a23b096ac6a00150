"""Several gateway processes on one PostgreSQL database, as behind a load balancer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from aigateway.store import Store
from aigateway.testing.pgserver import PASSWORD

from .test_server_process import ROOT, Gateway, start_gateway

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "gen_api_key_cli.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


async def status_of(session: aiohttp.ClientSession, gateway: Gateway, key: str) -> int:
    async with session.post(
        gateway.url + "/api/chat", data=CHAT, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_three_instances_share_keys_and_usage(
    upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    gateways = []
    for n in range(3):
        folder = tmp_path / f"gw{n}"
        folder.mkdir()
        gateways.append(
            await start_gateway(upstream, str(folder / "unused.db"), folder, DATABASE_URL=pg_url)
        )
    try:
        # A key made by the CLI a moment ago works on its first request, everywhere.
        made = cli("-g", "carol", "laptop", "--db", pg_url)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert PASSWORD not in made.stderr
        async with aiohttp.ClientSession() as session:
            assert [await status_of(session, gw, key) for gw in gateways] == [200, 200, 200]
            sent = 3
            for i in range(27):
                assert await status_of(session, gateways[i % 3], key) == 200
                sent += 1
            # Revoked by the CLI: refused by every instance within a second.
            revoked = cli("-d", "carol", "laptop", "--db", pg_url)
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            while True:
                statuses = [await status_of(session, gw, key) for gw in gateways]
                sent += statuses.count(200)  # relayed before the news arrived: counted too
                if statuses == [401, 401, 401]:
                    break
                assert time.monotonic() - started < 1.0, statuses
                await asyncio.sleep(0.05)
    finally:
        for gw in gateways:
            await gw.stop()
    # Every relayed request is counted once, in the one table.
    store = await Store.open(pg_url)
    try:
        rows = [r for r in await store.usage_rows() if r.status == 200]
    finally:
        await store.close()
    assert len(rows) == sent


async def test_postgresql_away_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"postgresql://aigateway:{PASSWORD}@127.0.0.1:1/aigateway"
    done = subprocess.run(
        [sys.executable, "-m", "aigateway"],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin", "LOG_LEVEL": "INFO"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert PASSWORD not in output and "Traceback" not in output
    assert "postgresql://aigateway:***@127.0.0.1:1/aigateway" in output
