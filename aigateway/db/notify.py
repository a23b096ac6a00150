"""PostgreSQL's LISTEN/NOTIFY: a change made by any gateway, CLI or the admin API wakes
every gateway at once, instead of each polling the database four times a second.

Every key write notifies `CHANNEL` in its transaction (`keys_changed`, delivered at
commit). The listener holds one connection of its own; while it is down (PostgreSQL away,
the connection cut) it says so through `listening`, and the key table falls back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import key_changes
from .url import Database

log = logging.getLogger("aigateway.keys")

CHANNEL = "aigateway_keys"
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # between tries to connect again, growing


def asyncpg_dsn(database: Database) -> str:
    """The URL as asyncpg takes it (the driver name SQLAlchemy needs removed)."""
    return database.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def keys_changed(conn: AsyncConnection) -> None:
    """In the transaction of a key change: move the version other gateways poll, and on
    PostgreSQL wake those that listen (the notification leaves at commit)."""
    await conn.execute(update(key_changes).values(version=key_changes.c.version + 1))
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"NOTIFY {CHANNEL}")


class ChangeListener:
    """Keeps a LISTEN connection open (reconnecting as needed) and sets `changed` on
    every notification, and whenever it (re)connects: what happened while it was away
    is unknown."""

    def __init__(self, database: Database, connect_timeout_s: float = 5.0) -> None:
        self._database = database
        self._timeout = connect_timeout_s
        self.changed = asyncio.Event()
        self.listening = False
        self._task: asyncio.Task[None] | None = None
        # Other channels on the same connection, each with what its payloads go to.
        self._also: dict[str, Callable[[str], None]] = {}

    def also(self, channel: str, heard: Callable[[str], None]) -> None:
        """Listen on `channel` too (before start()): `heard` gets each payload."""
        self._also[channel] = heard

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aigateway-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, *_args: Any) -> None:
        self.changed.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self._database), timeout=self._timeout)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if failures == 0:
                    log.warning(
                        "cannot listen for key changes on %s (%s); polling until it is back",
                        self._database.display,
                        type(exc).__name__,
                    )
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            try:
                conn.add_termination_listener(lambda _conn, ended=lost: ended.set())
                await conn.add_listener(CHANNEL, self._notified)
                for channel, heard in self._also.items():
                    await conn.add_listener(channel, _payload_to(heard))
                if failures:
                    log.info("listening for key changes again")
                failures = 0
                self.listening = True
                self.changed.set()  # changes made while not listening: reload once
                await _until_lost(conn, lost)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
            finally:
                self.listening = False
                self.changed.set()  # wake the table: it polls until this is back
                conn.terminate()
            if failures == 0:
                log.warning("lost the key-change connection; polling until it is back")
            failures += 1
            await asyncio.sleep(RETRY_S[0])


def _payload_to(heard: Callable[[str], None]) -> Callable[..., None]:
    """An asyncpg listener (connection, pid, channel, payload) that hands on the payload."""

    def listener(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            heard(payload)
        except Exception:  # a bad payload must not end the listening
            log.exception("a notification could not be handled")

    return listener


async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    """Return when the connection ends; a quiet connection cut by a network fault shows
    no end by itself, so ask the server every few seconds."""
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), 5.0)
            return
        await conn.fetchval("SELECT 1", timeout=5.0)
