"""gen_api_key_cli.py with flags: scripts get the key alone on stdout, mistakes get one line."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from aigateway.cli.flags import cli
from aigateway.keys import hash_key, looks_like_key
from aigateway.store import KeyRecord, Store


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def keys_in(db_path: str) -> list[KeyRecord]:
    async def go() -> list[KeyRecord]:
        store = await Store.open(db_path)
        try:
            return await store.list_keys()
        finally:
            await store.close()

    return asyncio.run(go())


def dump(db_path: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT * FROM keys ORDER BY id"))


def test_generate_prints_only_the_key(db_path: str) -> None:
    code, out, err = run("-g", "alice", "laptop", "--db", db_path)
    assert code == 0
    key = out.strip()
    assert out == key + "\n" and looks_like_key(key)
    assert "not be shown again" in err
    (record,) = keys_in(db_path)
    assert (record.user, record.name, record.role, record.expires_at) == (
        "alice",
        "laptop",
        "user",
        None,
    )
    assert record.key_hash == hash_key(key)


def test_generate_with_role_and_expiry(db_path: str) -> None:
    assert (
        run("--generate", "root", "ops", "--role", "admin", "--expires-days", "3", "--db", db_path)[
            0
        ]
        == 0
    )
    assert run("-g", "bob", "ci", "--expires", "2999-01-31", "--db", db_path)[0] == 0
    ops, ci = keys_in(db_path)
    assert ops.role == "admin" and ops.expires_at is not None
    assert ci.expires_at is not None and ci.expires_at > 32_000_000_000


def test_delete_revokes_and_keeps_the_row(db_path: str) -> None:
    run("-g", "alice", "laptop", "--db", db_path)
    code, _, err = run("-d", "alice", "laptop", "--db", db_path)
    assert code == 0 and "Revoked" in err
    (record,) = keys_in(db_path)
    assert record.revoked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-g", "alice", "laptop"], "already has an active key"),
        (["-g", "", "k"], "user must not be empty"),
        (["-g", "a" * 65, "k"], "at most 64"),
        (["-g", "bad\x07", "k"], "control characters"),
        (["-g", "a", "k", "--role", "root"], "root"),
        (["-g", "a", "k", "--expires-days", "-2"], "above 0"),
        (["-g", "a", "k", "--expires", "2020-01-01"], "today or a later date"),
        (["-g", "a", "k", "--expires", "tomorrow"], "YYYY-MM-DD"),
        (["-d", "nobody", "k"], "no user 'nobody'"),
        (["-d", "alice", "phone"], "no active key named 'phone'"),
        ([], "choose one action"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_changes_nothing(
    db_path: str, args: list[str], message: str
) -> None:
    run("-g", "alice", "laptop", "--db", db_path)
    before = dump(db_path)
    code, out, err = run(*args, "--db", db_path)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""
    assert "Traceback" not in err
    assert dump(db_path) == before


def test_bad_database_paths(tmp_path: Path) -> None:
    code, _, err = run("-g", "a", "k", "--db", str(tmp_path / "missing" / "t.db"))
    assert code == 1 and "does not exist" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite")
    code, _, err = run("-g", "a", "k", "--db", str(junk))
    assert code == 1 and "not an aigateway database" in err
    assert junk.read_bytes() == b"definitely not sqlite"


def test_db_comes_from_token_db_path_like_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TOKEN_DB_PATH=from-env-file.db\n")
    assert run("-g", "a", "k")[0] == 0
    assert (tmp_path / "from-env-file.db").exists()
    monkeypatch.setenv("TOKEN_DB_PATH", str(tmp_path / "from-environ.db"))
    assert run("-g", "a", "k")[0] == 0
    assert (tmp_path / "from-environ.db").exists()
