"""The CLI against a running gateway: its changes apply within about a second."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiohttp.test_utils import TestClient
from aiohttp.web import Request

ROOT = Path(__file__).resolve().parent.parent


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "gen_api_key_cli.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def seconds_until(
    anon: TestClient[Request, None], key: str, status: int, limit: float = 1.0
) -> float:
    started = time.monotonic()
    while True:
        got = (await anon.get("/api/tags", headers={"Authorization": f"Bearer {key}"})).status
        took = time.monotonic() - started
        if got == status:
            return took
        assert took < limit, f"still {got} after {took:.2f} s"
        await asyncio.sleep(0.02)


async def test_cli_changes_reach_the_running_gateway(
    anon: TestClient[Request, None], db_path: str
) -> None:
    code, out, _ = await cli("-g", "frank", "tablet", "--db", db_path)
    assert code == 0
    key = out.strip()
    assert await seconds_until(anon, key, 200) < 1.0
    code, _, _ = await cli("-d", "frank", "tablet", "--db", db_path)
    assert code == 0
    assert await seconds_until(anon, key, 401) < 1.0
    code, out, _ = await cli("-l", "--format", "json", "--db", db_path)
    assert code == 0 and '"last_used"' in out
