"""A key made by the CLI works on its very first request; unknown keys cannot turn into
a flood of database queries."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from aigateway.access.keytable import LOOK_AGAIN_GAP_S
from aigateway.http.appkeys import KEY_TABLE

ROOT = Path(__file__).resolve().parent.parent


def _cli_key(db_path: str, user: str, name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "gen_api_key_cli.py"), "-g", user, name, "--db", db_path],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


async def test_a_key_made_by_the_cli_works_on_its_first_request(
    gateway: TestServer, db_path: str
) -> None:
    """Before: 7 of 7 first requests got 401 (keys loaded on a 0.25 s poll)."""
    statuses = []
    async with aiohttp.ClientSession() as session:
        for number in range(7):
            key = await asyncio.to_thread(_cli_key, db_path, "new", f"k{number}")
            async with session.get(
                gateway.make_url("/api/tags"), headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                statuses.append(resp.status)
    assert statuses == [200] * 7


async def test_a_flood_of_unknown_keys_makes_few_database_looks(gateway: TestServer) -> None:
    table = gateway.app[KEY_TABLE]
    before = table.looks
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession) -> int:
        key = "aig_" + secrets.token_urlsafe(32)
        async with session.get(
            gateway.make_url("/api/tags"), headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            return resp.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(one(session) for _ in range(500)))
    took = time.monotonic() - started
    assert set(statuses) == {401}
    looks = table.looks - before
    assert 1 <= looks <= took / LOOK_AGAIN_GAP_S + 2, (looks, took)
    assert looks < 100  # 500 unknown keys, a few dozen looks at most


async def test_a_malformed_key_never_makes_a_look(gateway: TestServer) -> None:
    table = gateway.app[KEY_TABLE]
    before = table.looks
    async with aiohttp.ClientSession() as session:
        for key in ("nope", "aig_short", "Bearer-x" * 9):
            async with session.get(
                gateway.make_url("/api/tags"), headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                assert resp.status == 401
    assert table.looks == before
