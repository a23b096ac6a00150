"""A CLI reads only the settings it uses: a bad server-only setting does not stop it, and a
bad setting it uses stops it with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aigateway.settings import declarations

ROOT = Path(__file__).resolve().parent.parent

# Each stops the server (test_settings.py), none is read by gen_api_key_cli.py.
BAD_FOR_THE_SERVER = {
    "PORT": "abc",
    "MAX_BODY_SIZE": "lots",
    "UI_PATH": "/api",  # overlaps BASE_PATH: a rule between settings
    "GATEWAY_ADMIN_KEY": "short",
    "TLS_CERT_FILE": "only-the-certificate.pem",
}
BAD_IN_ENV_FILE = "BASE_PATH=api\nMETRICS=maybe\nSESSION_MAX_HOURS=forever\n"


def _environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any gateway setting, then `settings`."""
    declared = {d.variable for d in declarations()}
    env = {k: v for k, v in os.environ.items() if k not in declared}
    return {**env, "TOKEN_DB_PATH": str(tmp_path / "tokens.db"), **settings}


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_bad_server_setting_does_not_stop_the_key_cli(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(BAD_IN_ENV_FILE)
    env = _environment(tmp_path, **BAD_FOR_THE_SERVER)
    cli = str(ROOT / "gen_api_key_cli.py")

    made = _run(tmp_path, env, cli, "-g", "alice", "laptop")
    assert made.returncode == 0, made.stderr
    listed = _run(tmp_path, env, cli, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "laptop" in listed.stdout

    # The same settings do stop the server, with one line.
    server = _run(tmp_path, env, "-m", "aigateway", "--init-db")
    assert server.returncode != 0
    assert len(server.stderr.strip().splitlines()) == 1, server.stderr


def test_a_bad_setting_the_cli_uses_stops_it_with_one_line(tmp_path: Path) -> None:
    cli = str(ROOT / "gen_api_key_cli.py")
    assert _run(tmp_path, _environment(tmp_path), cli, "-g", "alice", "laptop").returncode == 0
    for variable, value, args in [
        ("CURRENCY", "dollars", ("--prices",)),
        ("DATABASE_URL", "mysql://db/keys", ("--list",)),
    ]:
        result = _run(tmp_path, _environment(tmp_path, **{variable: value}), cli, *args)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0], result.stderr
        assert "Traceback" not in result.stderr
