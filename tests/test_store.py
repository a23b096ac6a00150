"""The key database: private, WAL, versioned, and it never holds a key."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from aigateway.db.keys import KEY_PREFIX, generate_key, hash_key
from aigateway.db.migrate import APPLICATION_ID, SCHEMA_VERSION, head_revision
from aigateway.db.store import Store
from aigateway.records import DuplicateKeyError, InvalidInputError, StoreError


async def test_new_database_is_private_wal_and_versioned(db_path: str) -> None:
    store = await Store.open(db_path)
    await store.create_key("alice", "laptop")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            assert stat.S_IMODE(os.stat(db_path + suffix).st_mode) == 0o600
    await store.close()
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        versions = [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
    assert versions == [f"{SCHEMA_VERSION:04d}"] == [head_revision()]


async def test_reopening_applies_no_migration_twice(db_path: str) -> None:
    for _ in range(3):
        store = await Store.open(db_path)
        await store.close()
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]


def test_key_format_has_a_prefix_and_256_random_bits() -> None:
    keys = {generate_key().secret for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"aig_[A-Za-z0-9_-]{43}", key)
        assert key.startswith(KEY_PREFIX)
        # 43 URL-safe base64 characters carry 258 bits; token_urlsafe(32) uses 256 of them.
        assert len(key) - len(KEY_PREFIX) == 43


async def test_only_the_hash_and_a_display_prefix_are_stored(db_path: str) -> None:
    store = await Store.open(db_path)
    record, secret = await store.create_key("alice", "laptop", "admin")
    await store.close()
    assert record.key_hash == hash_key(secret)
    assert record.prefix == secret[:12]
    raw = b"".join(
        Path(path).read_bytes() for path in (db_path, db_path + "-wal") if os.path.exists(path)
    )
    assert secret.encode() not in raw
    assert secret[12:30].encode() not in raw


async def test_revoked_rows_stay_and_the_name_can_be_reused(db_path: str) -> None:
    store = await Store.open(db_path)
    await store.create_key("alice", "laptop")
    with pytest.raises(DuplicateKeyError):
        await store.create_key("alice", "laptop")
    await store.revoke_key("alice", "laptop")
    await store.create_key("alice", "laptop")
    statuses = [record.status() for record in await store.list_keys()]
    await store.close()
    assert statuses == ["revoked", "active"]


@pytest.mark.parametrize(
    ("user", "name", "role"),
    [
        ("", "k", "user"),
        ("a", " ", "user"),
        ("a" * 65, "k", "user"),
        ("a\x1b[31m", "k", "user"),
        ("a", "k\n", "user"),
        ("a", "k", "root"),
    ],
)
async def test_bad_names_and_roles_are_refused(
    db_path: str, user: str, name: str, role: str
) -> None:
    store = await Store.open(db_path)
    with pytest.raises(InvalidInputError):
        await store.create_key(user, name, role)  # type: ignore[arg-type]
    assert await store.list_keys() == []
    await store.close()


async def test_files_that_are_not_our_database_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all, just some text\n")
    with pytest.raises(StoreError, match="not an aigateway database"):
        await Store.open(str(text))
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StoreError, match="not an aigateway database"):
        await Store.open(str(other))
    with pytest.raises(StoreError, match="is a folder, not a database file"):
        await Store.open(str(tmp_path))
    assert text.read_text().startswith("hello")


async def test_a_newer_schema_is_refused(db_path: str) -> None:
    store = await Store.open(db_path)
    await store.close()
    with closing(sqlite3.connect(db_path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(db_path)


async def test_a_locked_database_fails_clearly_after_a_short_wait(db_path: str) -> None:
    store = await Store.open(db_path)
    await store.close()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        store = await Store.open(db_path, busy_timeout_s=0.2)
        with pytest.raises(StoreError, match="locked"):
            await store.create_key("alice", "laptop")
        await store.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
