"""PostgreSQL lost while serving: known keys keep working, every usage record is written
when it returns, and limits do what LIMITS_WHEN_DATABASE_AWAY says."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from aigateway.db.store import Store
from aigateway.testing.pgserver import PASSWORD, PostgresServer

from .test_instances import CHAT, _hold_streams, _key, cli, status_of
from .test_server_process import Gateway, start_gateways

# Long enough for the gateways' every retry loop to go round more than once (the key
# table's listener polls every 5 s); OUTAGE_SECONDS=30, the first issue's figure, or
# longer runs it as a soak by hand.
OUTAGE_S = float(os.environ.get("OUTAGE_SECONDS", "6"))


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again mid-test."""
    server = PostgresServer().start()
    server.sql("CREATE DATABASE outage")
    yield server
    server.close()


async def _gateways(
    upstream: TestServer, url: str, tmp_path: Path, *when_away: str
) -> list[Gateway]:
    """One gateway on `url` for each LIMITS_WHEN_DATABASE_AWAY given."""
    return await start_gateways(
        upstream,
        tmp_path,
        *({"DATABASE_URL": url, "LIMITS_WHEN_DATABASE_AWAY": mode} for mode in when_away),
    )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_an_outage_under_load_loses_no_record(
    upstream: TestServer, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url("outage")
    free = _key(url, "free")
    limited = _key(url, "limited", "--rpm", "100000")
    gateways = await _gateways(upstream, url, tmp_path, "local", "local", "refuse")
    statuses: Counter[tuple[str, int]] = Counter()
    phase = "before"
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession, worker: int) -> None:
        i = worker
        while not stop.is_set():
            gateway = gateways[i % 2]  # the two that keep serving on local counts
            key = (free, limited)[i // 2 % 2]
            i += 1
            async with session.post(
                gateway.url + "/api/chat", data=CHAT, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                await resp.read()
                statuses[(phase, resp.status)] += 1
            await asyncio.sleep(0.005)

    workers: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(load(session, n)) for n in range(4)]
            await asyncio.sleep(2)
            own_postgres.stop("fast")
            phase = "away"
            await asyncio.sleep(1)
            rss_early = [_rss_mb(gw.process.pid) for gw in gateways[:2]]

            # Meanwhile, on the gateway set to refuse: keys with limits get 503, the
            # others are served.
            refuser = gateways[2]
            for key, expected in ((limited, 503), (free, 200)):
                async with session.post(
                    refuser.url + "/api/chat",
                    data=CHAT,
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == expected, body
                    if expected == 503:
                        assert "database" in body["error"] and resp.headers["Retry-After"]

            await asyncio.sleep(OUTAGE_S - 1)
            rss_late = [_rss_mb(gw.process.pid) for gw in gateways[:2]]
            own_postgres.resume()
            phase = "after"
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*workers)
        served = {status for (_, status) in statuses}
        assert served == {200}, statuses
        assert statuses[("away", 200)] > 100 * OUTAGE_S / 30, statuses
        # Memory stays flat while records wait (they wait in the journal on disk).
        for early, late in zip(rss_early, rss_late, strict=True):
            assert late - early < 30, (rss_early, rss_late)

        relayed = sum(statuses.values()) + 1  # and the refusing gateway's free request
        store = await Store.open(url)
        try:
            deadline = time.monotonic() + 30
            while True:
                rows = [r for r in await store.usage_rows() if r.status == 200]
                if len(rows) >= relayed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await store.close()
        assert len(rows) == relayed
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        consoles = [await gw.stop() for gw in gateways]
    for console in consoles:
        assert PASSWORD not in console and "Traceback" not in console
        # Each problem said once, and its end said too, not a line per retry.
        assert console.count("could not reload keys") <= 1, console
        assert console.count("usage records wait in the journal") <= 2, console
    assert "usage records are written to the database again" in consoles[0]
    assert "admitting on this gateway's own counts" in consoles[0]
    assert "refusing requests of keys with limits" in consoles[2]


async def test_budgets_while_the_database_is_away(
    upstream: TestServer, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A budget of five per-request prices, two spent before the outage: the gateway set
    to `local` serves three more on the spend it last heard plus its own, then refuses
    (402); the one set to `refuse` answers 503. Back, the database learns what was spent
    meanwhile, and every gateway refuses."""
    url = own_postgres.url("outage")
    assert cli("--set-price", "llama3*", "--per-request", "0.01", "--db", url).returncode == 0
    assert cli("--add-user", "budgeted", "--budget", "0.05", "--db", url).returncode == 0
    key = _key(url, "budgeted")
    gateways = await _gateways(upstream, url, tmp_path, "local", "refuse")
    local, refuser = gateways
    try:
        async with aiohttp.ClientSession() as session:
            assert [await status_of(session, local, key) for _ in range(2)] == [200, 200]
            own_postgres.stop("fast")
            assert [await status_of(session, local, key) for _ in range(4)] == [
                200,
                200,
                200,
                402,
            ]
            assert await status_of(session, refuser, key) == 503
            own_postgres.resume()
            deadline = time.monotonic() + 15
            while await status_of(session, refuser, key) != 402:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
    finally:
        consoles = [await gw.stop() for gw in gateways]
    for console in consoles:
        assert "Traceback" not in console


async def test_slots_held_across_an_outage_come_back_when_it_ends(
    upstream: TestServer, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A key limited to two requests at once, one stream open when the database goes
    away: meanwhile the gateway serves one request after another on its own counts, each
    answered at once (an answer's end does not wait to give its slot back); back, what
    the stream and those requests gave back is written, and two at once are admitted
    again, not one (a slot lost in the outage would leave one)."""
    url = own_postgres.url("outage")
    key = _key(url, "pair", "--max-concurrent", "2")
    (gateway,) = await _gateways(upstream, url, tmp_path, "local")
    try:
        async with aiohttp.ClientSession() as session:
            statuses, held = await _hold_streams(session, [gateway], key, 1)
            assert statuses == [200]
            assert _in_flight(own_postgres) == 1
            own_postgres.stop("fast")
            for resp in held:
                resp.close()  # its slot is given back while the database is away
            for _ in range(10):
                started = time.monotonic()
                assert await status_of(session, gateway, key) == 200
                assert time.monotonic() - started < 1.5  # (the first finds it away)
            own_postgres.resume()
            deadline = time.monotonic() + 15
            while _in_flight(own_postgres) != 0:  # what was given back, written
                assert time.monotonic() < deadline
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.5)  # the gateway tries the database again
            statuses, held = await _hold_streams(session, [gateway], key, 3)
            assert sorted(statuses) == [200, 200, 429]
            assert _in_flight(own_postgres) == 2  # counted in the database, not locally
            for resp in held:
                resp.close()
    finally:
        console = await gateway.stop()
    assert PASSWORD not in console and "Traceback" not in console


def _in_flight(server: PostgresServer) -> int:
    """The requests at once the database counts for the one key with limits."""
    return int(server.sql("SELECT coalesce(max(in_flight), 0) FROM limit_counters", "outage"))
