"""Several gateway processes on one PostgreSQL database, as behind a load balancer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from aigateway.db.store import Store
from aigateway.testing.pgserver import PASSWORD, PostgresServer

from .helpers import minute_room
from .test_server_process import ROOT, Gateway, start_gateways

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
    gateways = await _three_gateways(upstream, pg_url, tmp_path)
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
            # A user disabled by the CLI: every key of it refused everywhere within a second.
            other = cli("-g", "erin", "pc", "--db", pg_url).stdout.strip()
            assert [await status_of(session, gw, other) for gw in gateways] == [200, 200, 200]
            sent += 3
            assert cli("--disable-user", "erin", "--db", pg_url).returncode == 0
            started = time.monotonic()
            while True:
                statuses = [await status_of(session, gw, other) for gw in gateways]
                sent += statuses.count(200)
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


STALL = b'{"model":"stall","prompt":"hold this open"}'


async def _three_gateways(
    upstream: TestServer, pg_url: str, tmp_path: Path, **settings: str
) -> list[Gateway]:
    return await start_gateways(upstream, tmp_path, *[{"DATABASE_URL": pg_url, **settings}] * 3)


def _key(pg_url: str, user: str, *limits: str) -> str:
    made = cli("-g", user, "k", *limits, "--db", pg_url)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


async def _hold_streams(
    session: aiohttp.ClientSession, gateways: list[Gateway], key: str, count: int
) -> tuple[list[int], list[aiohttp.ClientResponse]]:
    """`count` simultaneous streams to the stall model, spread over the gateways: the
    statuses, and the responses left open (the streams that were admitted)."""

    async def one(i: int) -> aiohttp.ClientResponse:
        resp = await session.post(
            gateways[i % len(gateways)].url + "/api/generate",
            data=STALL,
            headers={"Authorization": f"Bearer {key}"},
        )
        if resp.status == 200:
            await resp.content.readline()  # the first line: relayed, and held open
        else:
            await resp.read()
        return resp

    responses = await asyncio.gather(*(one(i) for i in range(count)))
    return [r.status for r in responses], [r for r in responses if r.status == 200]


async def test_limits_hold_exactly_across_instances(
    upstream: TestServer, pg_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    reserve = 100
    gateways = await _three_gateways(upstream, pg_url, tmp_path, TOKEN_RESERVE=str(reserve))
    per_minute = _key(pg_url, "rate", "--rpm", "50")
    at_once = _key(pg_url, "slots", "--max-concurrent", "3")
    quota = 1000
    tokens = _key(pg_url, "tokens", "--tokens-per-day", str(quota))
    unlimited = _key(pg_url, "free")
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            # 100 at once over three gateways against 50 a minute: exactly 50.
            await minute_room()  # (and counted in one minute)
            statuses = await asyncio.gather(
                *(status_of(session, gateways[i % 3], per_minute) for i in range(100))
            )
            assert (statuses.count(200), statuses.count(429)) == (50, 50)
            # Any gateway shows the key's use across all of them.
            async with session.get(
                gateways[2].url + "/admin/me", headers={"Authorization": f"Bearer {per_minute}"}
            ) as resp:
                current = (await resp.json())["current"]
            assert current["requests_this_minute"] == 50, current

            # 12 streams at once against 3 at once: exactly 3, and the slots come back
            # when they end.
            statuses, held = await _hold_streams(session, gateways, at_once, 12)
            assert (statuses.count(200), statuses.count(429)) == (3, 9)
            for resp in held:
                resp.close()
            started = time.monotonic()
            while True:
                statuses, held = await _hold_streams(session, gateways, at_once, 3)
                for resp in held:
                    resp.close()
                if statuses == [200, 200, 200]:
                    break
                assert time.monotonic() - started < 2.0, statuses
                await asyncio.sleep(0.05)

            # Tokens per day: each stream reserves its prompt (bytes / 4) and TOKEN_RESERVE
            # while it runs, so the quota admits exactly ceil(quota / reservation).
            each = len(STALL) // 4 + reserve
            statuses, held = await _hold_streams(session, gateways, tokens, 30)
            assert statuses.count(200) == -(-quota // each), statuses
            for resp in held:
                resp.close()

            # A body asking for more output than TOKEN_RESERVE tops its reservation up:
            # (15 + 100) at admission, +200 after the body; the third is refused.
            capped = _key(pg_url, "capped", "--tokens-per-day", "500")
            body = b'{"model":"stall","prompt":"hold","options":{"num_predict":300}}'
            assert len(body) // 4 == 15
            opened = []
            for n in range(3):
                resp = await session.post(
                    gateways[n].url + "/api/generate",
                    data=body,
                    headers={"Authorization": f"Bearer {capped}"},
                )
                if resp.status == 200:
                    await resp.content.readline()
                else:
                    await resp.read()
                opened.append(resp)
            assert [r.status for r in opened] == [200, 200, 429]
            for resp in opened:
                resp.close()

            # The database's own statistics: one admission call per request of a key with
            # limits (requests one after the other: none waits for another's call), none
            # for a key without.
            if postgres.has_statement_statistics:
                database = pg_url.rsplit("/", 1)[1]
                like = "%aigateway_admit(%"
                before = postgres.statement_calls(database, like)
                for i in range(20):
                    assert await status_of(session, gateways[i % 3], unlimited) == 200
                assert postgres.statement_calls(database, like) == before
                # (Limits beyond 32 bits too: the statement's numbers are 64-bit.)
                light = _key(pg_url, "light", "--rpm", "1000", "--tokens-per-day", "10000000000")
                for i in range(20):
                    assert await status_of(session, gateways[i % 3], light) == 200
                assert postgres.statement_calls(database, like) == before + 20
    finally:
        for gw in gateways:
            await gw.stop()


STREAM = b'{"model":"llama3.2","prompt":"count","stream":true}'


async def test_a_client_that_waits_for_each_answer_is_never_refused_a_slot(
    upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    """A key limited to one request at a time, a client that sends its next request the
    moment an answer ends: every request admitted, on one gateway and round-robin over
    three (the slot is given back in the database before the answer's last bytes go
    out). Before, 181 of 200 were refused on one gateway: the slot came back with a batch
    a few milliseconds later."""
    gateways = await _three_gateways(upstream, pg_url, tmp_path)
    key = _key(pg_url, "serial", "--max-concurrent", "1")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for i in range(90):
                gateway = gateways[0] if i < 30 else gateways[i % 3]
                # Whole answers (Content-Length) and NDJSON streams (chunked) alike.
                path, body = ("/api/chat", CHAT) if i % 2 else ("/api/generate", STREAM)
                async with session.post(gateway.url + path, data=body, headers=auth) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            assert statuses == [200] * 90, statuses
            # The limit still holds: two at once, one refused.
            statuses, held = await _hold_streams(session, gateways, key, 2)
            assert sorted(statuses) == [200, 429]
            for resp in held:
                resp.close()
    finally:
        for gw in gateways:
            await gw.stop()


async def test_a_killed_gateways_slots_and_reservations_are_given_back(
    upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    # A gateway is taken for dead after 3 s of silence here (15 s by default).
    heartbeat, dead_after = 0.25, 3.0
    gateways = await _three_gateways(
        upstream,
        pg_url,
        tmp_path,
        HEARTBEAT_INTERVAL=str(heartbeat),
        DEAD_GATEWAY_AFTER=str(dead_after),
    )
    # Two streams take both slots and, with what they reserve, the whole token quota.
    quota = 2 * (len(STALL) // 4 + 2048)  # TOKEN_RESERVE's default
    key = _key(pg_url, "slots", "--max-concurrent", "2", "--tokens-per-day", str(quota))
    # And two streams that reserve a budget of two per-request prices whole.
    assert cli("--set-price", "stall", "--per-request", "0.01", "--db", pg_url).returncode == 0
    assert cli("--add-user", "spender", "--budget", "0.02", "--db", pg_url).returncode == 0
    priced = _key(pg_url, "spender")
    try:
        async with aiohttp.ClientSession() as session:
            statuses, held = await _hold_streams(session, gateways[:1], key, 2)
            assert statuses == [200, 200]
            statuses, held_priced = await _hold_streams(session, gateways[:1], priced, 2)
            assert statuses == [200, 200]
            # Killed right after: slots and reservations are in its ledger from the moment
            # they are taken (they were written every 2 s, and those of the last 2 s lost).
            gateways[0].process.kill()  # no chance to give them back
            for resp in held + held_priced:
                resp.close()
            statuses, _ = await _hold_streams(session, gateways[1:], key, 1)
            assert statuses == [429]  # the database still counts them
            statuses, _ = await _hold_streams(session, gateways[1:], priced, 1)
            assert statuses == [402]  # and the reserved budget
            started = time.monotonic()
            while True:
                statuses, held = await _hold_streams(session, gateways[1:], key, 2)
                for resp in held:
                    resp.close()
                if statuses == [200, 200]:
                    break
                limit = dead_after + 8 * heartbeat  # (a loaded machine delays heartbeats)
                assert time.monotonic() - started < limit, statuses
                await asyncio.sleep(0.1)
            # The dead gateway's budget reservations come back with its slots (within a
            # heartbeat: the budgets' own reaping follows the limits' one).
            while True:
                statuses, held = await _hold_streams(session, gateways[1:], priced, 1)
                for resp in held:
                    resp.close()
                if statuses == [200]:
                    break
                assert time.monotonic() - started < limit + heartbeat, statuses
                await asyncio.sleep(0.1)
    finally:
        for gw in gateways:
            if gw.process.poll() is None:
                await gw.stop()


async def test_a_budget_holds_exactly_across_instances(
    upstream: TestServer, pg_url: str, tmp_path: Path
) -> None:
    """A user budget covering 50 per-request prices, 100 requests at once over three
    gateways, from two keys of the user: exactly 50 relayed; spent as recorded agrees;
    raising the budget lets the user in again everywhere."""
    assert cli("--add-user", "acme", "--budget", "0.50", "--db", pg_url).returncode == 0
    priced = cli("--set-price", "llama3*", "--per-request", "0.01", "--db", pg_url)
    assert priced.returncode == 0, priced.stderr
    key = _key(pg_url, "acme")
    second = cli("-g", "acme", "phone", "--db", pg_url).stdout.strip()  # the same user
    gateways = await _three_gateways(upstream, pg_url, tmp_path)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses = await asyncio.gather(
                *(status_of(session, gateways[i % 3], key if i % 2 else second) for i in range(100))
            )
            assert (statuses.count(200), statuses.count(402)) == (50, 50)
            report = ""
            deadline = time.monotonic() + 5
            while '"spent": 500000' not in report:  # once every record is written
                assert time.monotonic() < deadline, report
                await asyncio.sleep(0.1)
                report = cli("--check-budget", "acme", "--format", "json", "--db", pg_url).stdout
            assert '"exhausted": true' in report

            # Raised by the CLI: every gateway lets the user spend again, within a second.
            assert cli("--set-user", "acme", "--budget", "0.52", "--db", pg_url).returncode == 0
            started = time.monotonic()
            while await status_of(session, gateways[2], key) != 200:
                assert time.monotonic() - started < 1.5
                await asyncio.sleep(0.05)
            assert await status_of(session, gateways[0], key) == 200
            assert await status_of(session, gateways[1], key) == 402
    finally:
        for gw in gateways:
            await gw.stop()
