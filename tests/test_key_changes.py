"""Key changes reach a running gateway: on PostgreSQL by LISTEN/NOTIFY, with polling
while the listening connection is down."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from aigateway.access import keytable
from aigateway.access.keytable import AuthError, KeyTable, keep_fresh
from aigateway.db.notify import ChangeListener
from aigateway.db.store import Store
from aigateway.testing.pgserver import PostgresServer


async def _until(check: object, within: float) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < within, "not within the time allowed"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_notification_wakes_the_table_at_once(
    pg_url: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling so slow that only a notification can explain a quick reload.
    monkeypatch.setattr(keytable, "LISTENING_POLL_S", 60.0)
    monkeypatch.setattr(keytable, "RELOAD_INTERVAL_S", 60.0)
    server, admin = await Store.open(pg_url), await Store.open(pg_url)
    table = KeyTable()
    listener = ChangeListener(server.database)
    listener.start()
    await _until(lambda: listener.listening, 5.0)
    task = asyncio.create_task(keep_fresh(server, table, listener))
    try:
        await asyncio.sleep(0.1)
        record, secret = await admin.create_key("dora", "laptop")
        took = await _until(lambda: len(table) == 1, 1.0)
        assert took < 0.5
        assert table.authenticate(secret).id == record.id
        await admin.revoke_key("dora", "laptop")
        await _until(lambda: _refused(table, secret), 1.0)

        # The listening connection is cut (a restarted server, a network fault): the
        # table polls meanwhile, then listens again.
        monkeypatch.setattr(keytable, "RELOAD_INTERVAL_S", 0.05)
        postgres.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
        await _until(lambda: not listener.listening, 10.0)
        _again, secret2 = await admin.create_key("dora", "phone")
        await _until(lambda: _known(table, secret2), 2.0)
        await _until(lambda: listener.listening, 10.0)
        monkeypatch.setattr(keytable, "RELOAD_INTERVAL_S", 60.0)
        await asyncio.sleep(0.1)
        await admin.revoke_key("dora", "phone")
        assert await _until(lambda: _refused(table, secret2), 1.0) < 0.5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()
        await server.close()
        await admin.close()


def _known(table: KeyTable, secret: str) -> bool:
    try:
        table.authenticate(secret)
    except AuthError:
        return False
    return True


def _refused(table: KeyTable, secret: str) -> bool:
    return not _known(table, secret)
