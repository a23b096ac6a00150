"""Dashboard sign-ins: at most 10 a minute per key and 30 per client address, failed ones
included; at most 20 live sessions per key; ended sessions swept from the database.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3, ...) so the limits
per address and per key can be told apart."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable
from contextlib import closing
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.http import sessions
from aigateway.http.signinlimit import SignInLimits, SlidingWindow

from .conftest import make_key
from .helpers import eventually

SAME = {"X-Requested-With": "aigateway"}
UNKNOWN_KEY = "aig_" + "x" * 43  # well-formed, in no table


@dataclass
class Answer:
    status: int
    body: dict[str, object]
    retry_after: str | None
    cookie: str | None


async def _sign_in(server: TestServer, key: str, source: str = "127.0.0.2") -> Answer:
    """One sign-in from the loopback address `source`."""
    url = str(server.make_url("/ui/session"))
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, json={"key": key}, headers=SAME) as resp,
    ):
        cookie = resp.cookies.get("aigateway_session")
        return Answer(
            resp.status,
            await resp.json(),
            resp.headers.get("Retry-After"),
            None if cookie is None else cookie.value,
        )


async def _me(server: TestServer, cookie: str) -> int:
    async with (
        aiohttp.ClientSession(cookies={"aigateway_session": cookie}) as session,
        session.get(str(server.make_url("/admin/me"))) as resp,
    ):
        return resp.status


async def _refused_for_a_minute(sign_in: Awaitable[Answer], first: float) -> None:
    """`sign_in` is refused until the oldest attempt counted, made after `first`
    (time.monotonic(), the gateway's clock), leaves the minute."""
    answer = await sign_in
    answer_by = time.monotonic()
    assert answer.status == 429, answer
    assert answer.body["reason"] == "sign_in_limit"
    assert "too many sign-ins" in str(answer.body["error"])
    # (Whole seconds rounded up: at most 60, the sooner the longer the attempts took.)
    assert answer.retry_after is not None
    assert math.ceil(first + 60 - answer_by) <= int(answer.retry_after) <= 60, answer_by - first
    assert answer.cookie is None


async def test_a_key_signs_in_ten_times_a_minute_from_anywhere(
    gateway: TestServer, key: str, admin_key: str
) -> None:
    first = time.monotonic()
    for _ in range(10):
        assert (await _sign_in(gateway, key)).status == 200
    await _refused_for_a_minute(_sign_in(gateway, key), first)
    # The limit is the key's: another address gets no more for it...
    await _refused_for_a_minute(_sign_in(gateway, key, source="127.0.0.3"), first)
    # ...and another key from the first address still signs in (11 of its 30 used).
    assert (await _sign_in(gateway, admin_key)).status == 200


async def test_failed_sign_ins_of_a_known_key_count_against_it(
    gateway: TestServer, admin: TestClient[Request, None], db_path: str
) -> None:
    """A revoked key tried over and over (from several addresses) is refused with 429
    once its minute is used up, though every try failed."""
    key = await make_key(db_path, "mallory", "stolen")
    store = await Store.open(db_path)
    try:
        key_id = (await store.find_active_key("mallory", "stolen")).id
    finally:
        await store.close()
    assert (await admin.delete(f"/admin/keys/{key_id}")).status == 200
    first = time.monotonic()
    for attempt in range(10):
        answer = await _sign_in(gateway, key, source=f"127.0.0.{2 + attempt % 3}")
        assert answer.status == 401, answer
    await _refused_for_a_minute(_sign_in(gateway, key, source="127.0.0.9"), first)


async def test_wrong_keys_count_against_the_client_address(gateway: TestServer, key: str) -> None:
    """30 failed tries (unknown keys, malformed keys, bodies without a key) from one
    address: its next sign-in, even with a good key, waits; other addresses do not."""
    url = str(gateway.make_url("/ui/session"))
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    first = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        for attempt in range(30):
            if attempt % 3 == 0:
                resp = await session.post(url, json={"key": UNKNOWN_KEY}, headers=SAME)
            elif attempt % 3 == 1:
                resp = await session.post(url, json={"key": "guess"}, headers=SAME)
            else:
                resp = await session.post(url, data=b"{}", headers=SAME)
            assert resp.status == (401, 401, 400)[attempt % 3], await resp.text()
    await _refused_for_a_minute(_sign_in(gateway, key, source="127.0.0.2"), first)
    assert (await _sign_in(gateway, key, source="127.0.0.3")).status == 200


def test_the_window_slides_and_its_table_stays_bounded() -> None:
    window = SlidingWindow(limit=3, period=60.0, capacity=100)
    assert [window.take("a", t) for t in (0.0, 10.0, 20.0)] == [0.0, 0.0, 0.0]
    assert window.take("a", 30.0) == pytest.approx(30.0)  # until the take at 0 leaves
    assert window.take("a", 59.5) == pytest.approx(0.5)
    assert window.take("a", 60.0) == 0.0  # a slot freed: taken
    assert window.take("a", 61.0) == pytest.approx(9.0)  # the next frees at 70
    assert window.take("b", 61.0) == 0.0  # each subject its own window
    # A flood of subjects: the table never holds more than its capacity.
    for number in range(10_000):
        window.take(f"10.0.{number // 256}.{number % 256}", 62.0 + number * 1e-4)
        assert len(window) <= 100
    # An entry idle for a whole minute is forgotten.
    window.take("c", 200.0)
    assert len(window) == 1
    # Whole seconds for Retry-After, never 0 while refused.
    limits = SignInLimits(per_key=1, per_address=1)
    assert limits.take_address("10.0.0.1", 0.0) == 0
    assert limits.take_address("10.0.0.1", 59.99) == 1
    assert limits.take_key(7, 0.0) == 0 and limits.take_key(7, 0.5) == 60


def test_an_ipv6_client_is_its_slash_64() -> None:
    """Hopping between the addresses of one /64 gains nothing; the next /64 is another
    client, and an IPv4-mapped address is the IPv4 one."""
    limits = SignInLimits(per_address=2)
    assert limits.take_address("2001:db8:1:2::1", 0.0) == 0
    assert limits.take_address("2001:db8:1:2:ffff::9", 0.0) == 0
    assert limits.take_address("2001:db8:1:2:abcd::7", 0.0) == 60
    assert limits.take_address("2001:db8:1:3::1", 0.0) == 0
    assert limits.take_address("192.0.2.1", 0.0) == 0
    assert limits.take_address("::ffff:192.0.2.1", 0.0) == 0
    assert limits.take_address("192.0.2.1", 0.0) == 60


async def test_a_key_holds_at_most_twenty_sessions(database: str) -> None:
    store = await Store.open(database)
    try:
        mine, _ = await store.create_key("alice", "laptop")
        other, _ = await store.create_key("bob", "phone")
        await store.create_session("b" * 64, other.id, time.time() + 3600)
        made = []
        for number in range(25):
            id_hash = f"{number:064d}"
            await store.create_session(id_hash, mine.id, time.time() + 3600)
            made.append(id_hash)
        kept = [h for h in made if await store.find_session(h) is not None]
        assert kept == made[5:]  # the newest 20: the oldest five ended
        assert await store.find_session("b" * 64) is not None  # another key's untouched
    finally:
        await store.close()


async def test_a_new_sign_in_ends_the_oldest_session_beyond_twenty(
    gateway: TestServer, key: str, db_path: str
) -> None:
    first = await _sign_in(gateway, key)
    assert first.status == 200 and first.cookie is not None
    assert await _me(gateway, first.cookie) == 200
    store = await Store.open(db_path)
    try:
        key_id = (await store.find_active_key("alice", "laptop")).id
        for number in range(19):  # sessions signed in elsewhere: 20 in all
            await store.create_session(f"{number:064d}", key_id, time.time() + 3600)
    finally:
        await store.close()
    assert await _me(gateway, first.cookie) == 200
    newest = await _sign_in(gateway, key)  # the 21st
    assert newest.status == 200 and newest.cookie is not None
    assert await _me(gateway, first.cookie) == 401
    assert await _me(gateway, newest.cookie) == 200


async def test_ended_sessions_are_swept_and_the_sweep_survives_database_errors(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sessions, "SWEEP_INTERVAL_S", 0.05)
    await aiohttp_server(create_app(settings))  # its sweep runs from now on
    store = await Store.open(db_path)
    try:
        key, _ = await store.create_key("carol", "tablet")
        now = time.time()
        idle = now - settings.session_idle_minutes * 60 - 5
        rows = {"expired": now - 1, "idle": now + 3600, "live": now + 3600}
        for name, expires_at in rows.items():
            await store.create_session(name, key.id, expires_at)
        await _sql(db_path, "UPDATE sessions SET seen_at = ? WHERE id_hash = 'idle'", (idle,))

        async def gone() -> set[str]:
            return {name for name in rows if await store.find_session(name) is None}

        started = time.monotonic()
        while await gone() != {"expired", "idle"}:
            assert time.monotonic() - started < 3, await gone()
            await _pause()
        assert await store.find_session("live") is not None
        # The table goes away under the sweep: it logs, and keeps sweeping.
        (schema,) = await _sql(db_path, "SELECT sql FROM sqlite_master WHERE name = 'sessions'")
        assert isinstance(schema, str)
        await _sql(db_path, "DROP TABLE sessions")
        with caplog.at_level(logging.WARNING, logger="aigateway.sessions"):
            await eventually(lambda: "could not delete ended dashboard sessions" in caplog.text)
        await _sql(db_path, schema)
        await store.create_session("late", key.id, time.time() - 1)
        started = time.monotonic()
        while await store.find_session("late") is not None:
            assert time.monotonic() - started < 3
            await _pause()
    finally:
        await store.close()


async def _pause() -> None:
    await asyncio.sleep(0.05)


async def _sql(db_path: str, statement: str, args: tuple[object, ...] = ()) -> tuple[object, ...]:
    """One statement from another connection, in a thread: the gateway in this event loop
    may hold the write lock a moment and must be free to finish and let it go."""

    def run() -> tuple[object, ...]:
        with closing(sqlite3.connect(db_path, timeout=10)) as db, db:
            row = db.execute(statement, args).fetchone()
            return tuple(row) if row is not None else ()

    return await asyncio.to_thread(run)
