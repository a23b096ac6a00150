"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from aigateway.records import UsageRecord

NODE_DIR = Path(__file__).resolve().parent / "node"


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> float:
    """Poll `check` until it holds; return the seconds it took, fail after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def minute_room(needed: float = 5.0) -> float:
    """Wait, if fewer than `needed` seconds are left in this minute of the clock, for the
    next one to begin: so that what a test counts against a per-minute limit falls in one
    window however slow the machine. The time (time.time()) the window ends."""
    return await clock_room(60, needed)


async def clock_room(window: int, needed: float) -> float:
    """As minute_room, for a window of `window` seconds of the clock (3600: the hour of
    a per-hour limit, whose refusal says when the hour ends)."""
    left = window - time.time() % window
    if left < needed:
        await asyncio.sleep(left + 0.05)
    now = time.time()
    return now - now % window + window


def seconds_left(end: float, before: float, after: float) -> range:
    """The whole seconds a server rounds up to (Retry-After, X-RateLimit-Reset) from a time
    between `before` and `after` until `end`."""
    return range(math.ceil(end - after), math.ceil(end - before) + 1)


def node_client_ready() -> str | None:
    """Why the node tests cannot run, or None when they can (every package in
    tests/node/package.json installed, by npm if need be)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        # .ci/run installs them: there, a missing node is a failure, not a skip.
        assert not os.environ.get("CI"), "node and npm are missing under CI"
        return "node and npm are not installed on this machine"
    with (NODE_DIR / "package.json").open() as manifest:
        # Node tests on two pytest-xdist workers: one installs while the other waits,
        # rather than two npm runs in one folder or one test on a half-made install.
        fcntl.flock(manifest, fcntl.LOCK_EX)
        wanted = json.load(manifest)["dependencies"]
        if not all((NODE_DIR / "node_modules" / name).is_dir() for name in wanted):
            result = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, f"npm install failed: {result.stderr}"
    return None


def at_revision(revision: int) -> Callable[[Connection], None]:
    """What makes an empty database the schema of an earlier revision (a release before),
    for `run_sync` on a connection: the upgrade tests start from it."""

    def migrate(connection: Connection) -> None:
        from alembic import command
        from alembic.config import Config

        from aigateway.db.migrate import APPLICATION_ID, SCRIPTS

        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
        config = Config()
        config.set_main_option("script_location", str(SCRIPTS))
        config.attributes["connection"] = connection
        command.upgrade(config, f"{revision:04d}")
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA user_version = {revision}")

    return migrate


def old_key(connection: Connection) -> None:
    """A key (id 1, alice/old) written as a release before wrote it, for `run_sync`
    after `at_revision`: what an upgrade test checks is still there."""
    from sqlalchemy import insert

    from aigateway.db import schema

    connection.execute(
        insert(schema.keys).values(
            id=1, user="alice", name="old", key_hash="1" * 64, prefix="aig_x",
            role="user", created_at=1.0, revoked=0,
        )
    )  # fmt: skip


def old_usage_record(connection: Connection) -> None:
    """One usage record of alice's key "old" as a release before wrote it (only the
    columns every release has), for `run_sync` after at_revision."""
    from sqlalchemy import insert

    from aigateway.db import schema

    connection.execute(
        insert(schema.usage).values(
            ts=time.time(), key_id=1, user="alice", key_name="old", method="POST",
            route="/api/chat", status=200, duration_ms=1.0, bytes_in=1, bytes_out=1,
        )
    )  # fmt: skip


# The usage columns later revisions added, by the revision that added them.
_USAGE_COLUMN_SINCE = {"cached": 26}


def usage_rows_at(revision: int, records: Sequence[UsageRecord]) -> list[dict[str, object]]:
    """`records` as rows of the usage table at `revision` (a release before): without the
    columns a later revision added."""
    return [
        {k: v for k, v in r._asdict().items() if _USAGE_COLUMN_SINCE.get(k, 0) <= revision}
        for r in records
    ]
