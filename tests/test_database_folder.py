"""`DATABASE_URL=sqlite:///./data/x.db`, as the billing gateway's users set it, works on a
fresh clone: the path is relative to the folder of the `.env` that sets it (from the
environment: the current folder), as TOKEN_DB_PATH's is, and the missing folders are
made, each with mode 0700, by the server and both CLIs alike."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from aigateway.db.store import Store
from aigateway.records import StoreError
from aigateway.settings import Settings, database_target

from .test_server_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
RELATIVE = "sqlite:///./data/x.db"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TOKEN_DB_PATH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, str(ROOT / "gen_api_key_cli.py"), *args],
        cwd=cwd, env={**env, **settings}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_relative_sqlite_url_is_relative_to_its_env_files_folder(tmp_path: Path) -> None:
    """The server's settings and the CLIs' database_target agree, started anywhere."""
    project = tmp_path / "project"
    project.mkdir()
    env_file = project / ".env"
    env_file.write_text(f"DATABASE_URL={RELATIVE}\n")
    expected = f"sqlite:///{project}/data/x.db"
    assert Settings.from_env({}, env_file=env_file).database == expected
    assert database_target({}, env_file) == expected
    # from the environment: relative to the current folder, as a shell user means it
    assert Settings.from_env({"DATABASE_URL": RELATIVE}, env_file=env_file).database == RELATIVE
    assert database_target({"DATABASE_URL": RELATIVE}, env_file) == RELATIVE
    # a plain path follows the same rule; an absolute path and PostgreSQL are left alone
    env_file.write_text("DATABASE_URL=keys/t.db\n")
    assert database_target({}, env_file) == f"{project}/keys/t.db"
    for kept in ("sqlite:////srv/t.db", "postgresql://u:p@db:5432/gw"):
        env_file.write_text(f"DATABASE_URL={kept}\n")
        assert database_target({}, env_file) == kept


async def test_the_missing_folders_are_made_each_with_mode_0700(tmp_path: Path) -> None:
    old_mask = os.umask(0o022)
    try:
        store = await Store.open(str(tmp_path / "a" / "b" / "tokens.db"))
        await store.close()
    finally:
        os.umask(old_mask)
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a" / "b" / "tokens.db") == 0o600
    # a file where a folder should be is one clear error
    (tmp_path / "plain").write_text("")
    try:
        await Store.open(str(tmp_path / "plain" / "sub" / "tokens.db"))
    except StoreError as exc:
        assert "is not a folder" in str(exc), exc
    else:
        raise AssertionError("a file in the way was not refused")


async def test_the_server_and_the_flag_cli_share_a_relative_sqlite_url_on_a_fresh_clone(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Before: the server stopped with "the folder 'data' does not exist"."""
    (tmp_path / ".env").write_text(f"DATABASE_URL={RELATIVE}\n")
    gateway = await start_gateway(upstream, str(tmp_path / "unused.db"), tmp_path)
    try:
        database = tmp_path / "data" / "x.db"
        assert database.is_file()
        assert (_mode(tmp_path / "data"), _mode(database)) == (0o700, 0o600)
        # its usage journal beside it, not beside the TOKEN_DB_PATH it does not use
        assert (tmp_path / "data" / "x.db.usage-journal").is_dir()
        assert not (tmp_path / "unused.db.usage-journal").exists()
        # the flag CLI, started from the same folder, makes a key in the same database
        made = _cli(tmp_path, "-g", "alice", "laptop")
        assert made.returncode == 0, made.stderr
        assert f"in {database}" in made.stderr, made.stderr
        key = made.stdout.strip()
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
    finally:
        console = await gateway.stop()
    assert gateway.process.returncode == 0, console
    assert not (tmp_path / "unused.db").exists()


def test_the_flag_cli_makes_the_folder_of_a_relative_sqlite_url(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={RELATIVE}\n")
    made = _cli(tmp_path, "-g", "alice", "laptop")
    assert made.returncode == 0, made.stderr
    assert _mode(tmp_path / "data") == 0o700 and (tmp_path / "data" / "x.db").is_file()
    # from the environment, relative to the current folder (here another one)
    other = tmp_path / "other"
    other.mkdir()
    made = _cli(other, "-g", "bob", "laptop", DATABASE_URL="sqlite:///./nested/deeper/y.db")
    assert made.returncode == 0, made.stderr
    assert _mode(other / "nested") == _mode(other / "nested" / "deeper") == 0o700
    assert (other / "nested" / "deeper" / "y.db").is_file()
