"""tokens.db.example stays at the current schema and holds no usable key."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from aigateway.db.migrate import APPLICATION_ID, HEAD, SCHEMA_VERSION, head_revision
from aigateway.db.store import Store

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


@pytest.mark.parametrize(
    ("name", "version", "added"),
    [("schema2-tokens.db", 2, 1), ("schema3-tokens.db", 3, 0)],
)
async def test_a_database_of_an_earlier_release_upgrades_losing_nothing(
    tmp_path: Path, name: str, version: int, added: int
) -> None:
    """tests/data/schema2-tokens.db is tokens.db.example as the release before the usage
    journal made it; schema3-tokens.db as the last release before Alembic made it (its
    own numbered migrations, PRAGMA user_version 3). Opening either migrates it in place,
    stamps it with the matching Alembic revision, and keeps every row."""
    old = tmp_path / "tokens.db"
    shutil.copy(ROOT / "tests" / "data" / name, old)
    with closing(sqlite3.connect(old)) as db:
        before = db.execute("SELECT * FROM keys ORDER BY id").fetchall()
        usage_before = db.execute("SELECT * FROM usage ORDER BY id").fetchall()
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
    store = await Store.open(str(old))
    rows = await store.usage_rows()
    keys = await store.list_keys()
    await store.close()
    with closing(sqlite3.connect(old)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        after = db.execute("SELECT * FROM keys ORDER BY id").fetchall()
        user_ids = [row[0] for row in db.execute("SELECT user_id FROM keys ORDER BY id")]
        usage_after = db.execute("SELECT * FROM usage ORDER BY id").fetchall()
        users = dict(db.execute("SELECT name, id FROM users").fetchall())
    # Every key row as it was, plus its user's id; every user name on a key became a user.
    assert [row[: len(before[0])] for row in after] == before
    assert set(users) == {row[1] for row in before}
    assert user_ids == [users[row[1]] for row in before]
    width = len(usage_before[0]) if usage_before else 0
    assert [row[:width] for row in usage_after] == usage_before  # plus "estimated", 0
    assert all(row[-1] == 0 for row in usage_after) or not added
    assert len(rows) == len(usage_before) and not any(r.estimated for r in rows)
    assert len(keys) == len(before)


async def test_a_database_migrated_by_the_old_migrations_opens_under_the_cli(
    tmp_path: Path,
) -> None:
    """The flag CLI lists the keys of a schema-3 file (migrating it) with no error."""
    old = tmp_path / "tokens.db"
    shutil.copy(ROOT / "tests" / "data" / "schema3-tokens.db", old)
    done = subprocess.run(
        [sys.executable, str(ROOT / "gen_api_key_cli.py"), "-l", "--db", str(old)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "alice" in done.stdout


def test_the_schema_number_is_alembics_head() -> None:
    assert head_revision() == HEAD == f"{SCHEMA_VERSION:04d}"
