"""gen_api_key_cli.py with flags: scripts get the key alone on stdout, mistakes get one line."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from aigateway.cli.flags import cli
from aigateway.db.keys import hash_key, looks_like_key
from aigateway.db.store import Store
from aigateway.records import KeyRecord, UsageRecord


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
    with closing(sqlite3.connect(db_path)) as db:
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
        (["-g", "a", "k", "--expires", "2020-01-01"], "after today"),
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
    # listing a mistyped path makes nothing there (a new key would: test_database_folder)
    code, _, err = run("-l", "--db", str(tmp_path / "missing" / "t.db"))
    assert code == 1 and "no such database" in err
    assert not (tmp_path / "missing").exists()
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


def test_list_on_an_empty_database(db_path: str) -> None:
    keys_in(db_path)  # opening creates an empty database, as the server's start does
    assert run("-l", "--db", db_path) == (0, "No keys.\n", "")
    assert run("-l", "--format", "json", "--db", db_path)[1] == "[]\n"


@pytest.mark.parametrize(
    "args",
    [
        ["-l"],
        ["-d", "alice", "laptop"],
        ["-e", "keys.json"],
        ["--set", "alice", "laptop", "--rpm", "5"],
        ["--usage"],
        ["--usage-export", "usage.csv"],
        ["--purge", "alice", "laptop"],
    ],
)
def test_only_generate_creates_a_missing_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*args, "--db", "typo.db")
    assert code == 1 and out == ""
    assert err == "Error: typo.db: no such database (the server or the first key made creates it)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert run("-g", "alice", "laptop", "--db", "typo.db")[0] == 0


def test_list_formats(db_path: str) -> None:
    key = run("-g", "alice", "laptop", "--db", db_path)[1].strip()
    run("-g", "root", "ops", "--role", "admin", "--expires", "2999-12-31", "--db", db_path)
    run("-d", "alice", "laptop", "--db", db_path)
    code, table, _ = run("--list", "--db", db_path)
    assert code == 0
    header, _rule, *rows = table.splitlines()
    for title in (
        "ID",
        "User",
        "Key name",
        "Prefix",
        "Role",
        "Created",
        "Expires",
        "Last used",
        "Status",
    ):
        assert title in header
    assert "alice" in rows[0] and "revoked" in rows[0] and key[:12] in rows[0]
    assert "admin" in rows[1] and "2999-12-31" in rows[1] and "active" in rows[1]
    listed = json.loads(run("-l", "--format", "json", "--db", db_path)[1])
    assert [(k["user"], k["status"]) for k in listed] == [("alice", "revoked"), ("root", "active")]
    csv_rows = list(csv.DictReader(io.StringIO(run("-l", "--format", "csv", "--db", db_path)[1])))
    assert csv_rows[1]["expires"] == "2999-12-31T00:00:00Z"
    for output in (table, json.dumps(listed), str(csv_rows)):
        assert key not in output and hash_key(key) not in output


@pytest.mark.parametrize("name", ["keys.json", "keys.csv", "keys.txt"])
def test_export_reads_back_as_the_database(db_path: str, tmp_path: Path, name: str) -> None:
    secrets = [run("-g", user, "k", "--db", db_path)[1].strip() for user in ("ann", "ben")]
    run("-d", "ben", "k", "--db", db_path)
    target = tmp_path / name
    args = ["-e", str(target), "--db", db_path]
    if name.endswith(".txt"):
        assert "cannot tell the format" in run(*args)[2]
        args += ["--format", "json"]
    code, out, err = run(*args)
    assert (code, out) == (0, "")
    assert "Exported 2 keys" in err
    text = target.read_text()
    records = keys_in(db_path)
    if name.endswith(".csv"):
        exported = list(csv.DictReader(io.StringIO(text)))
        assert [int(row["id"]) for row in exported] == [r.id for r in records]
    else:
        doc = json.loads(text)
        exported = doc["keys"]
        assert [row["id"] for row in exported] == [r.id for r in records]
        assert doc["users"] == [
            {"user": "ann", "keys": 1, "active_keys": 1},
            {"user": "ben", "keys": 1, "active_keys": 0},
        ]
    assert [
        (row["user"], row["key_name"], row["prefix"], row["role"], row["status"])
        for row in exported
    ] == [(r.user, r.name, r.prefix, r.role, r.status()) for r in records]
    for record, secret in zip(records, secrets, strict=True):
        assert secret not in text and secret[12:20] not in text
        assert record.key_hash not in text


def test_export_refuses_to_overwrite_without_force(db_path: str, tmp_path: Path) -> None:
    run("-g", "ann", "k", "--db", db_path)
    target = tmp_path / "keys.json"
    target.write_text("precious")
    code, _, err = run("-e", str(target), "--db", db_path)
    assert code == 1 and "--force" in err
    assert target.read_text() == "precious"
    assert run("-e", str(target), "--force", "--db", db_path)[0] == 0
    assert json.loads(target.read_text())["keys"][0]["user"] == "ann"
    code, _, err = run("-e", str(tmp_path / "nowhere" / "k.csv"), "--db", db_path)
    assert code == 1 and "does not exist" in err


def test_purge_deletes_only_revoked_rows(db_path: str) -> None:
    run("-g", "ann", "k", "--db", db_path)
    code, _, err = run("--purge", "ann", "k", "--db", db_path)
    assert code == 1 and "revoke it first" in err
    run("-d", "ann", "k", "--db", db_path)
    assert run("--purge", "ann", "k", "--db", db_path)[0] == 0
    assert keys_in(db_path) == []


def test_one_action_at_a_time(db_path: str) -> None:
    code, _, err = run("-l", "-d", "a", "b", "--db", db_path)
    assert code == 1 and "choose one action" in err
    code, _, err = run("-l", "--expires-days", "3", "--db", db_path)
    assert code == 1 and "go with -g" in err


def test_a_locked_database_fails_clearly(db_path: str) -> None:
    run("-g", "ann", "k", "--db", db_path)
    before = dump(db_path)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        code, out, err = run("-g", "ben", "k", "--db", db_path)
        assert time.monotonic() - started < 10
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert code == 1 and out == ""
    assert "locked" in err and len(err.strip().splitlines()) == 1
    assert dump(db_path) == before


def test_help_shows_examples_and_how_to_purge() -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "KEY=$(gen_api_key_cli.py -g" in out and "--purge" in out


def test_limits_roles_and_allow_lists_are_set_and_shown(db_path: str) -> None:
    code, _, err = run(
        "-g",
        "bob",
        "phone",
        "--rpm",
        "20",
        "--tokens-per-day",
        "100000",
        "--models",
        "llama3*, qwen2.5:0.5b",
        "--db",
        db_path,
    )
    assert code == 0, err
    (record,) = keys_in(db_path)
    assert (record.limits.rpm, record.limits.rph, record.limits.tokens_per_day) == (
        20,
        None,
        100000,
    )
    assert record.models == ("llama3*", "qwen2.5:0.5b")
    table = run("-l", "--db", db_path)[1]
    assert "llama3*, qwen2.5:0.5b" in table and "100000" in table and "default" in table
    code, out, err = run(
        "--set",
        "bob",
        "phone",
        "--rpm",
        "none",
        "--rph",
        "default",
        "--max-concurrent",
        "2",
        "--models",
        "all",
        "--role",
        "admin",
        "--expires-days",
        "5",
        "--db",
        db_path,
    )
    assert code == 0, err
    assert "bob" in out
    (record,) = keys_in(db_path)
    assert (record.limits.rpm, record.limits.rph, record.limits.max_concurrent) == (0, None, 2)
    assert record.models is None and record.role == "admin" and record.expires_at is not None
    assert run("--set", "bob", "phone", "--no-expiry", "--db", db_path)[0] == 0
    assert keys_in(db_path)[0].expires_at is None
    shown = json.loads(run("-l", "--format", "json", "--db", db_path)[1])[0]
    assert (shown["rpm"], shown["max_concurrent"], shown["models"]) == (0, 2, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bob", "phone", "--rpm", "-1"], "--rpm must be 0 (no limit) or more"),
        (["--set", "bob", "phone", "--rph", "lots"], "--rph must be a whole number"),
        (["--set", "bob", "tablet", "--rpm", "1"], "no active key named 'tablet'"),
        (["--set", "bob", "phone"], "needs something to change"),
        (["-l", "--rpm", "5"], "go with -g or --set"),
        (["-g", "x", "y", "--models", "bad model"], "not a model name"),
        (["--usage", "--since", "last week"], "--since must be YYYY-MM-DD"),
        (["--usage", "--since", "2026-02-01", "--until", "2026-01-01"], "--until must be after"),
        (["-l", "--since", "2026-01-01"], "go with --usage"),
    ],
)
def test_bad_limit_and_usage_options(db_path: str, args: list[str], message: str) -> None:
    run("-g", "bob", "phone", "--db", db_path)
    before = dump(db_path)
    code, out, err = run(*args, "--db", db_path)
    assert (code, out) == (1, "")
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert dump(db_path) == before


def _seed_usage(db_path: str) -> None:
    async def go() -> None:
        store = await Store.open(db_path)
        day = 86400
        base = 1_790_000_000.0  # 2026-09-21
        rows = [
            UsageRecord(
                base,
                1,
                "ann",
                "laptop",
                "POST",
                "/chat",
                "llama3.2",
                200,
                10,
                5,
                100.0,
                10.0,
                50,
                500,
                False,
            ),
            UsageRecord(
                base + 60,
                1,
                "ann",
                "laptop",
                "POST",
                "/chat",
                "llama3.2",
                200,
                20,
                5,
                300.0,
                10.0,
                50,
                500,
                False,
            ),
            UsageRecord(
                base + day,
                2,
                "ben",
                "ci",
                "POST",
                "/embed",
                "all-minilm",
                200,
                7,
                None,
                50.0,
                5.0,
                40,
                400,
                True,
            ),
        ]
        await store.insert_usage(rows)
        await store.close()

    asyncio.run(go())


def test_usage_report(db_path: str) -> None:
    _seed_usage(db_path)
    by_key = json.loads(run("--usage", "--format", "json", "--db", db_path)[1])
    assert [(r["user"], r["key_name"], r["requests"], r["total_tokens"]) for r in by_key] == [
        ("ann", "laptop", 2, 40),
        ("ben", "ci", 1, 7),
    ]
    assert by_key[0]["avg_ms"] == 200.0 and by_key[0]["p95_ms"] == 300.0
    by_model = json.loads(run("--usage", "--by", "model", "--format", "json", "--db", db_path)[1])
    assert {r["model"]: r["requests"] for r in by_model} == {"llama3.2": 2, "all-minilm": 1}
    since_ben = json.loads(
        run(
            "--usage", "--by", "user", "--since", "2026-09-22", "--format", "json", "--db", db_path
        )[1]
    )
    assert [r["user"] for r in since_ben] == ["ben"]
    table = run("--usage", "--by", "user", "--until", "2026-09-22", "--db", db_path)[1]
    assert "ann" in table and "ben" not in table
    assert (
        run("--usage", "--since", "2030-01-01", "--db", db_path)[1] == "No usage in this period.\n"
    )
    # One user's usage in a period, per model: what an invoice lists.
    ann = json.loads(
        run("--usage", "--user", "ann", "--by", "model", "--format", "json", "--db", db_path)[1]
    )
    assert [(r["model"], r["requests"]) for r in ann] == [("llama3.2", 2)]
    assert run("--usage", "--user", "nobody", "--db", db_path)[1] == "No usage in this period.\n"
    code, _, err = run("-l", "--user", "ann", "--db", db_path)
    assert code == 1 and "--user goes with --usage or --usage-export" in err


@pytest.mark.parametrize("name", ["usage.csv", "usage.json"])
def test_usage_export(db_path: str, tmp_path: Path, name: str) -> None:
    _seed_usage(db_path)
    target = tmp_path / name
    code, _, err = run(
        "--usage-export", str(target), "--since", "2026-09-21T00:00:00", "--db", db_path
    )
    assert code == 0 and "Exported 3 usage records" in err
    text = target.read_text()
    rows = list(csv.DictReader(io.StringIO(text))) if name.endswith(".csv") else json.loads(text)
    assert [r["user"] for r in rows] == ["ann", "ann", "ben"]
    assert rows[2]["client_gone"] == ("True" if name.endswith(".csv") else True)
    assert rows[0]["time"].startswith("2026-09-21T")
    assert run("--usage-export", str(target), "--db", db_path)[0] == 1  # exists, no --force
    code, _, err = run("--usage-export", str(target), "--user", "ben", "--force", "--db", db_path)
    assert code == 0 and "Exported 1 usage records" in err


def test_csv_exports_neutralise_formulas(db_path: str, tmp_path: Path) -> None:
    """User and key names are an admin's, but model names are any client's: no CSV cell
    the CLIs write starts what a spreadsheet would run as a formula."""

    async def seed() -> None:
        store = await Store.open(db_path)
        await store.create_key('=HYPERLINK("http://x")', "+cmd")
        record = UsageRecord(
            1.8e9, 1, "=u", "@k", "POST", "/chat", "-2+3|cmd", 200, 1, 1, 1.0, 1.0, 1, 1, False
        )
        await store.insert_usage([record])
        await store.close()

    asyncio.run(seed())
    export, keys = tmp_path / "usage.csv", tmp_path / "keys.csv"
    assert run("--usage-export", str(export), "--db", db_path)[0] == 0
    assert run("-e", str(keys), "--db", db_path)[0] == 0
    outputs = [
        run("-l", "--format", "csv", "--db", db_path)[1],
        run("--usage", "--by", "model", "--format", "csv", "--db", db_path)[1],
        export.read_text(),
        keys.read_text(),
    ]
    for text in outputs:
        for row in csv.reader(io.StringIO(text)):
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (cell, text)
    assert "'=HYPERLINK" in outputs[0] and "'-2+3|cmd" in outputs[1] + outputs[2]
