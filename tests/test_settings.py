"""Settings: environment over .env over defaults; a bad value stops start-up with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aigateway.settings import Settings, SettingsError, token_db_path

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    settings = Settings.from_env({}, env_file=None)
    # The default database is in the project folder, wherever the server is started.
    assert settings == Settings(token_db_path=str(ROOT / "tokens.db"))
    assert settings.ollama_base_url == "http://localhost:11434"
    assert (settings.base_path, settings.port) == ("/api", 8000)


def test_environment_wins_over_env_file_which_wins_over_defaults(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nBASE_PATH=/ollama/api\nLOG_LEVEL=debug\nMAX_BODY_SIZE=2M\n")
    settings = Settings.from_env({"PORT": "9100"}, env_file=env_file)
    assert settings.port == 9100
    assert settings.base_path == "/ollama/api"
    assert settings.ollama_prefix == "/ollama"
    assert settings.log_level == "DEBUG"
    assert settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.host == "127.0.0.1"
    assert token_db_path({"TOKEN_DB_PATH": "/x/keys.db"}, env_file) == "/x/keys.db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("OLLAMA_BASE_URL", "localhost:11434"),
        ("OLLAMA_BASE_URL", "ftp://host"),
        ("BASE_PATH", "api"),
        ("BASE_PATH", "/"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FILE_LEVEL", "verbose"),
        ("MAX_BODY_SIZE", "lots"),
        ("UPSTREAM_CONNECT_TIMEOUT", "-1"),
        ("UPSTREAM_READ_TIMEOUT", "soon"),
        ("UI_PATH", "/api"),  # the relayed routes' own path
        ("UI_PATH", "/admin/ui"),  # under the admin API
        ("UI_PATH", "/v1"),
        ("UI_PATH", "ui"),
        ("SESSION_IDLE_MINUTES", "0"),
        ("SESSION_MAX_HOURS", "forever"),
        ("MAX_BODY_MEMORY_PER_KEY", "1K"),  # below MAX_BODY_SIZE
        ("MAX_BODY_MEMORY_PER_KEY", "2G"),  # above MAX_BODY_MEMORY
        ("BODY_MIN_RATE", "fast"),
        ("USAGE_MEMORY_RECORDS", "-1"),
        ("TRUSTED_PROXIES", "nginx"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("PORT", "-1"),
        ("HEARTBEAT_INTERVAL", "0"),
        ("DEAD_GATEWAY_AFTER", "3"),  # under twice the 2 s heartbeat
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value}, env_file=None)
    assert str(info.value).startswith(f"{name}: expected")
    assert "\n" not in str(info.value)


def test_the_body_and_proxy_settings_read_as_documented() -> None:
    defaults = Settings.from_env({}, env_file=None)
    assert defaults.body_memory_per_key == 256 * 1024**2  # a quarter of MAX_BODY_MEMORY
    assert defaults.body_min_rate == 16 * 1024
    assert defaults.usage_memory_records == 100_000
    assert defaults.trusted_proxies == ()
    # Never less than MAX_BODY_SIZE, whatever the quarter comes to.
    small = Settings.from_env({"MAX_BODY_MEMORY": "200M"}, env_file=None)
    assert small.body_memory_per_key == 100 * 1024**2
    chosen = Settings.from_env(
        {"BODY_MIN_RATE": "32KiB/s", "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"},
        env_file=None,
    )
    assert chosen.body_min_rate == 32 * 1024
    assert [str(n) for n in chosen.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert Settings.from_env({"BODY_MIN_RATE": "0"}, env_file=None).body_min_rate == 0


def test_the_heartbeat_of_gateways_on_postgresql_and_port_0_read_as_documented() -> None:
    defaults = Settings.from_env({}, env_file=None)
    assert (defaults.heartbeat_interval, defaults.dead_gateway_after) == (2.0, 15.0)
    quick = Settings.from_env(
        {"HEARTBEAT_INTERVAL": "0.25", "DEAD_GATEWAY_AFTER": "0.5", "PORT": "0"}, env_file=None
    )
    assert (quick.heartbeat_interval, quick.dead_gateway_after, quick.port) == (0.25, 0.5, 0)


def test_the_dashboard_path_can_move_or_be_turned_off() -> None:
    assert Settings.from_env({}, env_file=None).ui_path == "/ui"
    assert Settings.from_env({"UI_PATH": "/console/"}, env_file=None).ui_path == "/console"
    assert Settings.from_env({"UI_PATH": "off"}, env_file=None).ui_path is None


@pytest.mark.parametrize(("name", "value"), [("PORT", "abc"), ("BASE_PATH", "api")])
def test_server_stops_with_one_line_on_a_bad_value(tmp_path: Path, name: str, value: str) -> None:
    env = {**os.environ, name: value, "TOKEN_DB_PATH": str(tmp_path / "t.db")}
    result = subprocess.run(
        [sys.executable, "-m", "aigateway"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "t.db").exists()


def test_the_clis_and_the_server_find_one_database_from_any_folder(tmp_path: Path) -> None:
    """Before: a CLI started from another folder quietly made a new tokens.db there."""
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".venv", ".git", "*.db*"))
    (project / ".env").write_text("TOKEN_DB_PATH=keys/tokens.db\n")
    (project / "keys").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TOKEN_DB_PATH"}
    env["PYTHONPATH"] = str(project)
    result = subprocess.run(
        [sys.executable, str(project / "gen_api_key_cli.py"), "-g", "a", "k"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (project / "keys" / "tokens.db").exists()
    assert not list(elsewhere.iterdir())
    assert f"in {project / 'keys' / 'tokens.db'}" in result.stderr
    server = subprocess.run(
        [sys.executable, "-m", "aigateway", "--init-db"], cwd=elsewhere, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert server.returncode == 0, server.stderr
    assert not list(elsewhere.iterdir())


def test_secret_settings_stay_out_of_the_settings_repr() -> None:
    """A repr reaches logs and tracebacks: the keys the gateway holds never do."""
    admin, upstream = "a" * 40, "upstream-secret-123"
    settings = Settings.from_env(
        {"GATEWAY_ADMIN_KEY": admin, "UPSTREAM_API_KEY": upstream}, env_file=None
    )
    assert (settings.gateway_admin_key, settings.upstream_api_key) == (admin, upstream)
    shown = repr(settings)
    assert admin not in shown and upstream not in shown and "ollama_base_url" in shown
