"""Gateway settings: the environment first, then `.env`, then defaults.

Nothing here runs at import time; `Settings.from_env()` is called by whoever starts
the server or a CLI. A bad value raises `SettingsError` whose message names the
variable and what was expected, so start-up can stop with one clear line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from dotenv import dotenv_values
from yarl import URL

from .db.url import DatabaseURLError, database_from
from .upstreams.config import (
    UpstreamConfig,
    UpstreamsError,
    auth_headers,
    upstreams_from_file,
    upstreams_from_urls,
)

# Read a .env the usual way (see find_env_file); None reads none.
AUTO = "auto"
_HERE = Path(__file__).resolve().parent.parent
PROJECT_DIR: Path | None = _HERE if (_HERE / "run.sh").is_file() else None
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:I?B)?\s*$", re.IGNORECASE)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use."""


DEFAULT_CURRENCY = "USD"


@dataclass(frozen=True, slots=True)
class Settings:
    ollama_base_url: str = "http://localhost:11434"
    base_path: str = "/api"
    host: str = "127.0.0.1"
    port: int = 8000
    token_db_path: str = "tokens.db"
    # DATABASE_URL: sqlite:///path or postgresql://user:password@host:port/db; None: the
    # SQLite file at TOKEN_DB_PATH.
    database_url: str | None = None
    log_level: str = "INFO"
    log_file: str | None = None
    log_file_level: str = "INFO"
    max_body_bytes: int = 100 * 1024**2
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    upstream_api_key: str | None = None
    # The upstreams a TOML file (UPSTREAMS_FILE) lists; empty: those of OLLAMA_BASE_URL.
    upstreams: tuple[UpstreamConfig, ...] = ()
    upstreams_file: str | None = None
    upstream_check_interval: float = 5.0
    # How long a request may wait for room when every upstream for it is at max_concurrent.
    upstream_queue_timeout: float = 30.0
    # /metrics: off, on (anyone may scrape it) or admin (an admin key is needed).
    metrics: str = "off"
    admin_path: str = "/admin"
    gateway_admin_key: str | None = None
    default_rpm: int = 0
    default_rph: int = 0
    default_tokens_per_day: int = 0
    default_max_concurrent: int = 0
    usage_retention_days: int = 90
    cors_origins: tuple[str, ...] = ()
    max_body_memory: int = 1024**3
    # Request-body bytes one key may hold at once (None: a quarter of MAX_BODY_MEMORY,
    # never less than MAX_BODY_SIZE); see body_memory_per_key.
    max_body_memory_per_key: int | None = None
    # Bytes a second a request body must keep up over any 10 s after its first 10 s
    # (0: no floor); slower bodies get 408 and free their memory.
    body_min_rate: int = 16 * 1024
    # Usage records held in memory while the journal cannot take them; beyond, requests
    # are refused (503) rather than served unrecorded.
    usage_memory_records: int = 100_000
    # Proxies (addresses or networks) whose X-Forwarded-* / Forwarded headers are believed.
    trusted_proxies: tuple[Network, ...] = ()
    token_reserve: int = 2048
    # Seconds of model time a request of a model priced per second reserves against
    # budgets (its real time is known only when it ends).
    budget_time_reserve: int = 60
    shutdown_timeout: float = 10.0
    allow_cloud_models: bool = False
    usage_journal_dir: str | None = None  # None: TOKEN_DB_PATH + ".usage-journal"
    idle_timeout: float = 30.0
    # PostgreSQL away while serving: admit keys with limits on this gateway's own counts
    # ("local"), or refuse them with 503 ("refuse").
    limits_when_database_away: str = "local"
    # PostgreSQL only: how often each gateway says it is alive, and how long one may be
    # silent (killed, cut off) before what its requests held is given back to the others.
    heartbeat_interval: float = 2.0
    dead_gateway_after: float = 15.0
    # The currency of prices and costs (ISO 4217 code); prices and budgets are micro-units
    # of it, costs nano-units.
    currency: str = DEFAULT_CURRENCY
    # Serve HTTPS with this certificate chain and private key (PEM files); both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # The dashboard's path (None: no dashboard), and how long its sessions last: idle,
    # and at most from sign-in.
    ui_path: str | None = "/ui"
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    # Mark the session cookie Secure: "auto" when the gateway itself serves HTTPS; "true"
    # behind a proxy that terminates TLS; "false" never.
    session_cookie_secure: str = "auto"

    @property
    def body_memory_per_key(self) -> int:
        if self.max_body_memory_per_key is not None:
            return self.max_body_memory_per_key
        return max(self.max_body_memory // 4, self.max_body_bytes)

    @property
    def database(self) -> str:
        """What the store opens: DATABASE_URL, else the TOKEN_DB_PATH file."""
        return self.database_url or self.token_db_path

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    @property
    def upstream_list(self) -> tuple[UpstreamConfig, ...]:
        """Where requests go: UPSTREAMS_FILE's upstreams, else OLLAMA_BASE_URL's."""
        return self.upstreams or upstreams_from_urls(self.ollama_base_url, self.upstream_api_key)

    @property
    def ollama_prefix(self) -> str:
        """The path an Ollama client puts after its host: `/ollama` for
        `BASE_PATH=/ollama/api`, "" when BASE_PATH is `/api` or does not end in `/api`."""
        if self.base_path == "/api":
            return ""
        if self.base_path.endswith("/api"):
            return self.base_path[: -len("/api")]
        return ""

    @property
    def v1_path(self) -> str:
        """Where clients reach Ollama's OpenAI/Anthropic-compatible `/v1` routes."""
        return self.ollama_prefix + "/v1"

    def client_prefix(self, native: bool) -> str:
        return self.base_path if native else self.v1_path

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
    ) -> Settings:
        """Read settings: `environ` (default `os.environ`) wins over `env_file` (AUTO:
        see `find_env_file`); a relative TOKEN_DB_PATH is resolved as `token_db_path`
        says, so the server and the CLIs agree wherever they are started."""
        env_path = find_env_file() if env_file == AUTO else env_file
        merged = _files_beside_env(merged_environment(environ, env_path), environ, env_path)
        settings = cls.from_mapping(merged)
        path = token_db_path(environ, env_path)
        return settings if path == settings.token_db_path else replace(settings, token_db_path=path)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = values.get(name)
            if value is None or value.strip() == "":
                return None
            return value.strip()

        d = cls()
        settings = cls(
            ollama_base_url=_ollama_urls(get("OLLAMA_BASE_URL"), d.ollama_base_url),
            base_path=_base_path("BASE_PATH", get("BASE_PATH"), d.base_path),
            host=get("HOST") or d.host,
            port=_int("PORT", get("PORT"), d.port, low=0, high=65535),  # 0: any free one
            token_db_path=get("TOKEN_DB_PATH") or d.token_db_path,
            database_url=_database_url("DATABASE_URL", get("DATABASE_URL")),
            log_level=_log_level("LOG_LEVEL", get("LOG_LEVEL"), d.log_level),
            log_file=get("LOG_FILE"),
            log_file_level=_log_level("LOG_FILE_LEVEL", get("LOG_FILE_LEVEL"), d.log_file_level),
            max_body_bytes=_size("MAX_BODY_SIZE", get("MAX_BODY_SIZE"), d.max_body_bytes),
            upstream_connect_timeout=_seconds(
                "UPSTREAM_CONNECT_TIMEOUT",
                get("UPSTREAM_CONNECT_TIMEOUT"),
                d.upstream_connect_timeout,
            ),
            upstream_read_timeout=_seconds(
                "UPSTREAM_READ_TIMEOUT", get("UPSTREAM_READ_TIMEOUT"), d.upstream_read_timeout
            ),
            upstream_api_key=get("UPSTREAM_API_KEY"),
            upstreams=_upstreams_file(get("UPSTREAMS_FILE"), values),
            upstreams_file=get("UPSTREAMS_FILE"),
            upstream_check_interval=_seconds(
                "UPSTREAM_CHECK_INTERVAL",
                get("UPSTREAM_CHECK_INTERVAL"),
                d.upstream_check_interval,
            ),
            metrics=_choice("METRICS", get("METRICS"), d.metrics, ("off", "on", "admin")),
            upstream_queue_timeout=_seconds(
                "UPSTREAM_QUEUE_TIMEOUT", get("UPSTREAM_QUEUE_TIMEOUT"), d.upstream_queue_timeout
            ),
            admin_path=_base_path("ADMIN_PATH", get("ADMIN_PATH"), d.admin_path),
            gateway_admin_key=_secret("GATEWAY_ADMIN_KEY", get("GATEWAY_ADMIN_KEY")),
            default_rpm=_int("DEFAULT_RPM", get("DEFAULT_RPM"), 0, low=0, high=10**9),
            default_rph=_int("DEFAULT_RPH", get("DEFAULT_RPH"), 0, low=0, high=10**9),
            default_tokens_per_day=_int(
                "DEFAULT_TOKENS_PER_DAY", get("DEFAULT_TOKENS_PER_DAY"), 0, low=0, high=10**12
            ),
            default_max_concurrent=_int(
                "DEFAULT_MAX_CONCURRENT", get("DEFAULT_MAX_CONCURRENT"), 0, low=0, high=10**6
            ),
            cors_origins=_origins("CORS_ORIGINS", get("CORS_ORIGINS")),
            usage_retention_days=_int(
                "USAGE_RETENTION_DAYS",
                get("USAGE_RETENTION_DAYS"),
                d.usage_retention_days,
                low=0,
                high=36500,
            ),
            max_body_memory=_size("MAX_BODY_MEMORY", get("MAX_BODY_MEMORY"), d.max_body_memory),
            max_body_memory_per_key=_optional_size(
                "MAX_BODY_MEMORY_PER_KEY", get("MAX_BODY_MEMORY_PER_KEY")
            ),
            body_min_rate=_rate("BODY_MIN_RATE", get("BODY_MIN_RATE"), d.body_min_rate),
            usage_memory_records=_int(
                "USAGE_MEMORY_RECORDS",
                get("USAGE_MEMORY_RECORDS"),
                d.usage_memory_records,
                low=0,
                high=10**8,
            ),
            trusted_proxies=_networks("TRUSTED_PROXIES", get("TRUSTED_PROXIES")),
            token_reserve=_int(
                "TOKEN_RESERVE", get("TOKEN_RESERVE"), d.token_reserve, low=1, high=10**7
            ),
            budget_time_reserve=_int(
                "BUDGET_TIME_RESERVE",
                get("BUDGET_TIME_RESERVE"),
                d.budget_time_reserve,
                low=0,
                high=86400,
            ),
            shutdown_timeout=_seconds(
                "SHUTDOWN_TIMEOUT", get("SHUTDOWN_TIMEOUT"), d.shutdown_timeout
            ),
            allow_cloud_models=_bool("ALLOW_CLOUD_MODELS", get("ALLOW_CLOUD_MODELS"), False),
            usage_journal_dir=get("USAGE_JOURNAL_DIR"),
            idle_timeout=_seconds("IDLE_TIMEOUT", get("IDLE_TIMEOUT"), d.idle_timeout),
            limits_when_database_away=_choice(
                "LIMITS_WHEN_DATABASE_AWAY",
                get("LIMITS_WHEN_DATABASE_AWAY"),
                d.limits_when_database_away,
                ("local", "refuse"),
            ),
            heartbeat_interval=_seconds(
                "HEARTBEAT_INTERVAL", get("HEARTBEAT_INTERVAL"), d.heartbeat_interval
            ),
            dead_gateway_after=_seconds(
                "DEAD_GATEWAY_AFTER", get("DEAD_GATEWAY_AFTER"), d.dead_gateway_after
            ),
            currency=_currency("CURRENCY", get("CURRENCY"), d.currency),
            tls_cert_file=get("TLS_CERT_FILE"),
            tls_key_file=get("TLS_KEY_FILE"),
            ui_path=_ui_path(get("UI_PATH"), d.ui_path),
            session_idle_minutes=_int(
                "SESSION_IDLE_MINUTES",
                get("SESSION_IDLE_MINUTES"),
                d.session_idle_minutes,
                low=1,
                high=7 * 24 * 60,
            ),
            session_max_hours=_int(
                "SESSION_MAX_HOURS", get("SESSION_MAX_HOURS"), d.session_max_hours, low=1, high=720
            ),
            session_cookie_secure=_choice(
                "SESSION_COOKIE_SECURE",
                get("SESSION_COOKIE_SECURE"),
                d.session_cookie_secure,
                ("auto", "true", "false"),
            ),
        )
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise SettingsError(
                "TLS_CERT_FILE and TLS_KEY_FILE: set both to serve HTTPS, or neither"
            )
        if settings.dead_gateway_after < 2 * settings.heartbeat_interval:
            raise SettingsError(
                "DEAD_GATEWAY_AFTER: expected at least twice HEARTBEAT_INTERVAL"
                f" ({settings.heartbeat_interval:g} s): a gateway that misses one heartbeat"
                f" is not dead, got {settings.dead_gateway_after:g}"
            )
        if settings.max_body_memory < settings.max_body_bytes:
            raise SettingsError(
                f"MAX_BODY_MEMORY: expected at least MAX_BODY_SIZE ({settings.max_body_bytes}"
                f" bytes), got {settings.max_body_memory}"
            )
        per_key = settings.max_body_memory_per_key
        if (
            per_key is not None
            and not settings.max_body_bytes <= per_key <= settings.max_body_memory
        ):
            raise SettingsError(
                "MAX_BODY_MEMORY_PER_KEY: expected between MAX_BODY_SIZE"
                f" ({settings.max_body_bytes} bytes) and MAX_BODY_MEMORY"
                f" ({settings.max_body_memory} bytes), got {per_key}"
            )
        _apart("ADMIN_PATH", settings.admin_path, ("BASE_PATH", settings.base_path))
        if settings.ui_path is not None:
            _apart(
                "UI_PATH",
                settings.ui_path,
                ("BASE_PATH", settings.base_path),
                ("ADMIN_PATH", settings.admin_path),
                ("the /v1 routes", settings.v1_path),
            )
        return settings


def _apart(name: str, path: str, *others: tuple[str, str]) -> None:
    """`path` neither is nor holds nor lies under any of `others`."""
    for other_name, other in others:
        if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
            raise SettingsError(
                f"{name}: expected a path apart from {other_name} ({other}), got {path!r}"
            )


def _ui_path(raw: str | None, default: str | None) -> str | None:
    """UI_PATH: a path such as /ui, or off (no dashboard)."""
    if raw is not None and raw.strip().lower() in ("off", "none", "false", "0"):
        return None
    return _base_path("UI_PATH", raw, default or "/ui")


def find_env_file() -> Path | None:
    """`.env` in the current folder, else in the project folder (the checkout holding
    run.sh), else none: so a CLI started from another folder reads the server's."""
    for folder in (Path.cwd(), PROJECT_DIR):
        if folder is not None and (folder / ".env").is_file():
            return folder / ".env"
    return None


def merged_environment(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = None
) -> dict[str, str]:
    """The environment laid over the `.env` file: what every setting is read from."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


def _files_beside_env(
    merged: dict[str, str], environ: Mapping[str, str] | None, env_path: str | Path | None
) -> dict[str, str]:
    """A relative UPSTREAMS_FILE from a `.env` file is relative to that file's folder (as
    TOKEN_DB_PATH is); from the environment, to the current folder."""
    environment = os.environ if environ is None else environ
    value = merged.get("UPSTREAMS_FILE", "").strip()
    if not value or environment.get("UPSTREAMS_FILE") or env_path is None:
        return merged
    if Path(value).is_absolute():
        return merged
    return {**merged, "UPSTREAMS_FILE": str(Path(env_path).resolve().parent / value)}


def token_db_path(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """TOKEN_DB_PATH exactly as the server resolves it, without judging other settings.
    A relative path from the environment is relative to the current folder, as a shell
    user means it; one from a `.env` file is relative to that file's folder; the default
    (`tokens.db`) is in the folder of the `.env` in use, else in the project folder."""
    env_path = find_env_file() if env_file == AUTO else env_file
    environment = os.environ if environ is None else environ
    value = environment.get("TOKEN_DB_PATH", "").strip()
    if value:
        return value
    from_file = merged_environment({}, env_path).get("TOKEN_DB_PATH", "").strip()
    base = Path(env_path).resolve().parent if env_path is not None else PROJECT_DIR
    path = Path(from_file or Settings().token_db_path)
    if path.is_absolute() or base is None:
        return str(path)
    return str(base / path)


def database_target(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """The database the server would open, for the CLIs: DATABASE_URL from the
    environment or the `.env` file, else the TOKEN_DB_PATH file (see token_db_path)."""
    env_path = find_env_file() if env_file == AUTO else env_file
    url = merged_environment(environ, env_path).get("DATABASE_URL", "").strip()
    return url or token_db_path(environ, env_path)


def _database_url(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        database_from(raw)
    except DatabaseURLError as exc:
        raise SettingsError(str(exc)) from None
    return raw


def _int(name: str, raw: str | None, default: int, *, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: expected a number from {low} to {high}, got {value}")
    return value


def _currency(name: str, raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if len(raw) != 3 or not raw.isascii() or not raw.isalpha():
        raise SettingsError(
            f"{name}: expected a three-letter currency code such as USD, got {raw!r}"
        )
    return raw.upper()


def currency_setting(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """CURRENCY as the server reads it, for the CLIs' reports."""
    env_path = find_env_file() if env_file == AUTO else env_file
    raw = merged_environment(environ, env_path).get("CURRENCY", "").strip()
    return _currency("CURRENCY", raw or None, DEFAULT_CURRENCY)


def ollama_setting(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> list[tuple[str, dict[str, str]]]:
    """Every Ollama the server relays to (UPSTREAMS_FILE's, else OLLAMA_BASE_URL's), each
    with the headers that authenticate the gateway to it, for the CLIs' model sync."""
    env_path = find_env_file() if env_file == AUTO else env_file
    merged = _files_beside_env(merged_environment(environ, env_path), environ, env_path)
    found = _upstreams_file((merged.get("UPSTREAMS_FILE") or "").strip() or None, merged)
    if not found:
        urls = _ollama_urls(merged.get("OLLAMA_BASE_URL") or None, Settings().ollama_base_url)
        key = merged.get("UPSTREAM_API_KEY", "").strip() or None
        found = upstreams_from_urls(urls, key)
    return [(u.url, auth_headers(u)) for u in found if u.kind == "ollama"]


def _choice(name: str, raw: str | None, default: str, choices: tuple[str, ...]) -> str:
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise SettingsError(f"{name}: expected {' or '.join(choices)}, got {raw!r}")
    return raw.lower()


def _bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _seconds(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise SettingsError(f"{name}: expected a number of seconds above 0, got {raw!r}")
    return value


def _size(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    match = _SIZE_RE.match(raw)
    if match is None or int(match.group(1)) == 0:
        raise SettingsError(
            f"{name}: expected a size such as 104857600, 100M or 1G (above 0), got {raw!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _optional_size(name: str, raw: str | None) -> int | None:
    return None if raw is None else _size(name, raw, 0)


def _rate(name: str, raw: str | None, default: int) -> int:
    """Bytes a second, as a size (`16K`, `16KiB/s`); 0 turns the floor off."""
    if raw is None:
        return default
    stripped = raw.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    if stripped.strip() == "0":
        return 0
    match = _SIZE_RE.match(stripped)
    if match is None:
        raise SettingsError(
            f"{name}: expected bytes a second such as 16384, 16K or 16KiB/s (0: off), got {raw!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _networks(name: str, raw: str | None) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks: `127.0.0.1`, `10.0.0.0/8, ::1`."""
    if raw is None:
        return ()
    networks: list[Network] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SettingsError(
                f"{name}: expected addresses or networks such as 127.0.0.1 or 10.0.0.0/8,"
                f" separated by commas, got {part!r}"
            ) from None
    return tuple(networks)


def _origins(name: str, raw: str | None) -> tuple[str, ...]:
    """Comma-separated browser origins (`https://app.example.com`), or `*` for any."""
    if raw is None:
        return ()
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin == "*":
            continue
        url = URL(origin) if "://" in origin else None
        if url is None or not url.scheme or not url.host or url.path not in ("", "/"):
            raise SettingsError(
                f"{name}: expected origins such as https://app.example.com (comma-separated)"
                f" or *, got {origin!r}"
            )
    return origins


def _secret(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    if len(raw) < 32 or not raw.isprintable() or " " in raw:
        raise SettingsError(
            f"{name}: expected at least 32 printable characters without spaces"
            " (e.g. from: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


def _log_level(name: str, raw: str | None, default: str) -> str:
    if raw is None:
        return default
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def _ollama_urls(raw: str | None, default: str) -> str:
    """OLLAMA_BASE_URL: one URL or several separated by commas, each checked, joined
    again without spaces or trailing slashes."""
    if raw is None:
        return default
    try:
        return ",".join(u.url for u in upstreams_from_urls(raw, None))
    except UpstreamsError as exc:
        raise SettingsError(str(exc)) from None


def _upstreams_file(path: str | None, values: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    """UPSTREAMS_FILE's upstreams, their keys read from the environment and .env."""
    if path is None:
        return ()
    try:
        return upstreams_from_file(path, values)
    except UpstreamsError as exc:
        raise SettingsError(str(exc)) from None


def _base_path(name: str, raw: str | None, default: str) -> str:
    if raw is None:
        return default
    if not raw.startswith("/") or raw.startswith("//"):
        raise SettingsError(f"{name}: expected a path starting with a single '/', got {raw!r}")
    if any(c in raw for c in "?#{} ") or "//" in raw:
        raise SettingsError(
            f"{name}: expected a plain path such as /api or /ollama/api, got {raw!r}"
        )
    path = raw.rstrip("/")
    if not path:
        raise SettingsError(f"{name}: expected a path below '/', such as /api, got {raw!r}")
    return path


def log_level_number(level: str) -> int:
    return logging.getLevelNamesMapping()[level]
