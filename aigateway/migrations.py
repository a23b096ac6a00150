"""Numbered schema migrations, each applied once, in its own transaction, and recorded.

To change the schema, append a function to MIGRATIONS; never edit one that has shipped.
`PRAGMA user_version` mirrors the number applied so tools can read it cheaply, and
`PRAGMA application_id` marks the file as an aigateway database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiosqlite

APPLICATION_ID = 0x41494757  # "AIGW"

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


async def m001_keys(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE keys (
            id INTEGER PRIMARY KEY,
            user TEXT NOT NULL,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
            created_at REAL NOT NULL,
            expires_at REAL,
            last_used_at REAL,
            revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
            revoked_at REAL
        )
        """
    )
    # Revoked rows stay for history, so only one *active* key may carry a user + name.
    await db.execute(
        "CREATE UNIQUE INDEX keys_active_user_name ON keys(user, name) WHERE revoked = 0"
    )


async def m002_limits_and_usage(db: aiosqlite.Connection) -> None:
    # Per-key limits: NULL means "the gateway's default", 0 means "no limit".
    for column in ("rpm", "rph", "tokens_per_day", "max_concurrent"):
        await db.execute(f"ALTER TABLE keys ADD COLUMN {column} INTEGER")
    # A JSON list of model patterns; NULL means every model.
    await db.execute("ALTER TABLE keys ADD COLUMN models TEXT")
    await db.execute(
        """
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            key_id INTEGER NOT NULL,
            user TEXT NOT NULL,
            key_name TEXT NOT NULL,
            method TEXT NOT NULL,
            route TEXT NOT NULL,
            model TEXT,
            status INTEGER NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            duration_ms REAL NOT NULL,
            ttfb_ms REAL,
            bytes_in INTEGER NOT NULL,
            bytes_out INTEGER NOT NULL,
            client_gone INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    await db.execute("CREATE INDEX usage_ts ON usage(ts)")
    await db.execute("CREATE INDEX usage_key_ts ON usage(key_id, ts)")


async def m003_usage_journal(db: aiosqlite.Connection) -> None:
    # The journal segments whose records are in `usage`: replaying one is then a no-op.
    await db.execute(
        "CREATE TABLE usage_segments (name TEXT PRIMARY KEY, written_at REAL NOT NULL)"
    )
    # 1 when the counts were counted or estimated by the gateway (a stream cut short).
    await db.execute("ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[Migration] = [m001_keys, m002_limits_and_usage, m003_usage_journal]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The file is SQLite, but not an aigateway database this version can use."""


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring `db` to SCHEMA_VERSION; return how many migrations were applied."""
    app_id = await _pragma_int(db, "application_id")
    version = await _pragma_int(db, "user_version")
    if app_id != APPLICATION_ID:
        async with db.execute("SELECT count(*) FROM sqlite_master") as cur:
            row = await cur.fetchone()
        if app_id != 0 or version != 0 or (row is not None and row[0] > 0):
            raise SchemaError("it is an SQLite file, but not an aigateway database")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"its schema version {version} is newer than this aigateway understands "
            f"({SCHEMA_VERSION}); upgrade aigateway"
        )
    applied = 0
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            if await _pragma_int(db, "user_version") >= number:
                await db.execute("ROLLBACK")
                continue
            if number == 1:
                await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                await db.execute(
                    "CREATE TABLE schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
            await migration(db)
            await db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (number, migration.__name__, time.time()),
            )
            await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        applied += 1
    return applied


async def _pragma_int(db: aiosqlite.Connection, name: str) -> int:
    async with db.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
