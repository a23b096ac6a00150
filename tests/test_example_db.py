"""tokens.db.example stays at the current schema and holds no usable key."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from aigateway.migrations import APPLICATION_ID, SCHEMA_VERSION
from aigateway.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tokens.db.example"


def schema(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as db:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_example_is_at_the_current_schema(tmp_path: Path) -> None:
    copy = tmp_path / "example.db"  # a copy, so no -wal/-shm files appear in the repo
    shutil.copy(EXAMPLE, copy)
    with closing(sqlite3.connect(copy)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
    assert (version, app_id) == (SCHEMA_VERSION, APPLICATION_ID), (
        "tokens.db.example is behind the migrations: run scripts/make_example_db.py"
    )
    fresh = tmp_path / "fresh.db"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_example_db.py"), str(fresh)],
        check=True,
        capture_output=True,
    )
    assert schema(copy) == schema(fresh)


async def test_example_opens_and_holds_only_metadata(tmp_path: Path) -> None:
    copy = tmp_path / "tokens.db"
    shutil.copy(EXAMPLE, copy)
    store = await Store.open(str(copy))
    records = await store.list_keys()
    await store.close()
    assert {r.user for r in records} >= {"ops", "alice", "bob"}
    assert {r.status() for r in records} == {"active", "revoked"}
    assert all(len(r.key_hash) == 64 for r in records)
    # Display prefixes only: nothing shaped like a whole key.
    assert re.search(rb"aig_[A-Za-z0-9_-]{43}", EXAMPLE.read_bytes()) is None
    pristine = tmp_path / "pristine.db"
    shutil.copy(EXAMPLE, pristine)
    assert schema(copy) == schema(pristine)  # opening it needed no migration


async def test_a_database_of_the_previous_schema_upgrades_losing_nothing(tmp_path: Path) -> None:
    """tests/data/schema2-tokens.db is tokens.db.example as the release before the usage
    journal made it (schema 2): opening it migrates it in place and keeps every row."""
    old = tmp_path / "tokens.db"
    shutil.copy(ROOT / "tests" / "data" / "schema2-tokens.db", old)
    with closing(sqlite3.connect(old)) as db:
        before = db.execute("SELECT * FROM keys ORDER BY id").fetchall()
        usage_before = db.execute("SELECT * FROM usage ORDER BY id").fetchall()
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    store = await Store.open(str(old))
    rows = await store.usage_rows()
    await store.close()
    with closing(sqlite3.connect(old)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT * FROM keys ORDER BY id").fetchall() == before
        usage_after = db.execute("SELECT * FROM usage ORDER BY id").fetchall()
    assert [row[:-1] for row in usage_after] == usage_before  # plus "estimated", 0
    assert all(row[-1] == 0 for row in usage_after)
    assert len(rows) == len(usage_before) and not any(r.estimated for r in rows)
