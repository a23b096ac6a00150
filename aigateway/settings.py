"""Gateway settings: the environment first, then `.env`, then defaults.

Each setting is declared once, as a field of `Settings` made by `setting(...)`: its
variable, default, parser (what it accepts, with its bounds), group and one line of help.
The server reads them all (`Settings.from_env()`); a CLI reads only those it uses
(`currency_setting`, `database_target`, `ollama_setting`), so a bad server-only setting
does not stop it; `python -m aigateway.settings --markdown` writes docs/settings.md.

Nothing here runs at import time. A bad value raises `SettingsError` whose message names
the variable and what was expected, so start-up can stop with one clear line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from dotenv import dotenv_values
from yarl import URL

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
DEFAULT_CURRENCY = "USD"

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use."""


# --- parsers: text to value, or SettingsError naming the variable -------------------------


def _shown(value: object) -> str:
    """A default as the reference shows it."""
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Parser(Generic[T_co]):
    """Reads one variable's (stripped, non-empty) text; says what it accepts."""

    def __init__(
        self,
        read: Callable[[str, str], T_co],
        accepts: str,
        show: Callable[[object], str] = _shown,
    ) -> None:
        self.read = read
        self.accepts = accepts  # for the reference: what a value may be
        self.show = show  # for the reference: a default as a person would write it

    def __call__(self, name: str, raw: str) -> T_co:
        return self.read(name, raw)


def text(accepts: str) -> Parser[str]:
    return Parser(lambda _name, raw: raw, accepts)


def whole(low: int, high: int) -> Parser[int]:
    def read(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}: expected a number from {low} to {high}, got {value}")
        return value

    return Parser(read, f"a whole number from {low:,} to {high:,}")


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise SettingsError(f"{name}: expected a number of seconds above 0, got {raw!r}")
    return value


def choice(*choices: str) -> Parser[str]:
    def read(name: str, raw: str) -> str:
        if raw.lower() not in choices:
            raise SettingsError(f"{name}: expected {' or '.join(choices)}, got {raw!r}")
        return raw.lower()

    return Parser(read, ", ".join(f"`{c}`" for c in choices[:-1]) + f" or `{choices[-1]}`")


def _boolean(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _bytes_shown(value: object) -> str:
    """104857600 as `100M`: the largest unit that divides it."""
    if not isinstance(value, int) or value == 0:
        return _shown(value)
    for unit in ("G", "M", "K"):
        if value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)


def _size(name: str, raw: str) -> int:
    match = _SIZE_RE.match(raw)
    if match is None or int(match.group(1)) == 0:
        raise SettingsError(
            f"{name}: expected a size such as 104857600, 100M or 1G (above 0), got {raw!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _rate(name: str, raw: str) -> int:
    """Bytes a second, as a size (`16K`, `16KiB/s`); 0 turns the floor off."""
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


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks: `127.0.0.1`, `10.0.0.0/8, ::1`."""
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


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated browser origins (`https://app.example.com`), or `*` for any."""
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


def _secret(name: str, raw: str) -> str:
    if len(raw) < 32 or not raw.isprintable() or " " in raw:
        raise SettingsError(
            f"{name}: expected at least 32 printable characters without spaces"
            " (e.g. from: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


def _log_level(name: str, raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def _currency(name: str, raw: str) -> str:
    if len(raw) != 3 or not raw.isascii() or not raw.isalpha():
        raise SettingsError(
            f"{name}: expected a three-letter currency code such as USD, got {raw!r}"
        )
    return raw.upper()


def _ollama_urls(_name: str, raw: str) -> str:
    """OLLAMA_BASE_URL: one URL or several separated by commas, each checked, joined
    again without spaces or trailing slashes."""
    try:
        return ",".join(u.url for u in upstreams_from_urls(raw, None))
    except UpstreamsError as exc:
        raise SettingsError(str(exc)) from None


def _database_url(_name: str, raw: str) -> str:
    # Imported here: the SQL toolkit is heavy, and only a DATABASE_URL needs it.
    from .db.url import DatabaseURLError, database_from

    try:
        database_from(raw)
    except DatabaseURLError as exc:
        raise SettingsError(str(exc)) from None
    return raw


def _base_path(name: str, raw: str) -> str:
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


def _ui_path(name: str, raw: str) -> str | None:
    """UI_PATH: a path such as /ui, or off (no dashboard)."""
    if raw.strip().lower() in ("off", "none", "false", "0"):
        return None
    return _base_path(name, raw)


SECONDS = Parser(_seconds, "seconds above 0 (`2.5` too)")
BOOLEAN = Parser(_boolean, "`true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)")
SIZE = Parser(_size, "bytes above 0, or with `K`, `M` or `G` (`100M`)", _bytes_shown)
RATE = Parser(_rate, "bytes a second (`16384`, `16K`, `16KiB/s`); `0`: off", _bytes_shown)
NETWORKS = Parser(_networks, "addresses or networks, comma-separated (`10.0.0.0/8, ::1`)")
ORIGINS = Parser(_origins, "origins, comma-separated (`https://app.example.com`), or `*`")
SECRET = Parser(_secret, "32 or more printable characters, no spaces")
LOG_LEVEL = Parser(_log_level, "`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`")
CURRENCY = Parser(_currency, "a three-letter currency code (`EUR`)")
OLLAMA_URLS = Parser(_ollama_urls, "`http://` or `https://` URLs, comma-separated")
DATABASE_URL = Parser(
    _database_url, "`postgresql://user:password@host:5432/db` or `sqlite:///path`"
)
PATH = Parser(_base_path, "a path starting with `/`")
UI_PATH = Parser(_ui_path, "a path starting with `/`, or `off`")
FILE = text("a file path")


# --- declarations ------------------------------------------------------------------------

# The reference's sections, in order; every setting names one.
GROUPS = (
    "Upstreams",
    "Listening",
    "Database and usage",
    "Logging",
    "Request bodies",
    "Limits and budgets",
    "Admin API and dashboard",
)


@dataclass(frozen=True)
class Declared:
    """What a `setting(...)` field declares, kept in the field's metadata."""

    variable: str
    parse: Parser[object]
    group: str
    help: str
    shown_default: str | None = None  # when the default is worked out, not a value


def setting(
    variable: str,
    default: T,
    parse: Parser[T],
    group: str,
    help: str,
    *,
    shown_default: str | None = None,
) -> T:
    """A `Settings` field read from `variable` (unset or blank: `default`)."""
    assert group in GROUPS, group
    declaration = Declared(variable, parse, group, help, shown_default)
    return field(default=default, metadata={"setting": declaration})


def declaration_of(of: Field[Any]) -> Declared | None:
    found = of.metadata.get("setting")
    return found if isinstance(found, Declared) else None


@dataclass(frozen=True, slots=True)
class Settings:
    """What the server runs with. Each field is a declared setting (see `setting`), read
    by `from_env`; tests build one directly with keyword arguments."""

    ollama_base_url: str = setting(
        "OLLAMA_BASE_URL", "http://localhost:11434", OLLAMA_URLS, "Upstreams",
        "Where Ollama listens (`http://` or `https://`); several URLs separated by commas put"
        " several Ollama servers behind the gateway (see [Several upstreams](upstreams.md)).",
    )  # fmt: skip
    upstreams_file: str | None = setting(
        "UPSTREAMS_FILE", None, FILE, "Upstreams",
        "A TOML file listing the upstreams (Ollama servers, OpenAI- and Anthropic-compatible"
        " APIs); replaces `OLLAMA_BASE_URL`. A relative path is relative to the folder of the"
        " `.env` that sets it (from the environment: to the current folder). A bad file stops"
        " start-up with one line naming the entry.",
    )  # fmt: skip
    # The upstreams UPSTREAMS_FILE lists (read from it, not a variable of its own);
    # empty: those of OLLAMA_BASE_URL.
    upstreams: tuple[UpstreamConfig, ...] = ()
    upstream_api_key: str | None = setting(
        "UPSTREAM_API_KEY", None, text("the upstream's key"), "Upstreams",
        "Sent to Ollama (every `OLLAMA_BASE_URL`) as `Authorization: Bearer ...` when the"
        " upstream itself wants a key. Client keys never reach Ollama.",
    )  # fmt: skip
    upstream_connect_timeout: float = setting(
        "UPSTREAM_CONNECT_TIMEOUT", 10.0, SECONDS, "Upstreams",
        "Seconds to connect to Ollama; then 504.",
    )  # fmt: skip
    upstream_read_timeout: float = setting(
        "UPSTREAM_READ_TIMEOUT", 600.0, SECONDS, "Upstreams",
        "Seconds Ollama may stay silent (also before the first byte of a long prompt"
        ' evaluation); then 504, or an `{"error":...}` line mid-stream.',
    )  # fmt: skip
    upstream_check_interval: float = setting(
        "UPSTREAM_CHECK_INTERVAL", 5.0, SECONDS, "Upstreams",
        "With several upstreams: seconds between checks of each (its models, loaded models"
        " and health). With one: the longest `/health/ollama` reuses its last probe.",
    )  # fmt: skip
    upstream_queue_timeout: float = setting(
        "UPSTREAM_QUEUE_TIMEOUT", 30.0, SECONDS, "Upstreams",
        "Seconds a request may wait, in the fair queue, for room when every upstream that"
        " serves it is at its `max_concurrent`; then 503 with `Retry-After`.",
    )  # fmt: skip
    allow_cloud_models: bool = setting(
        "ALLOW_CLOUD_MODELS", False, BOOLEAN, "Upstreams",
        "Relay Ollama's cloud models (`*-cloud`, `*:cloud`), which run on ollama.com under"
        " the GPU owner's account.",
    )  # fmt: skip

    host: str = setting(
        "HOST", "127.0.0.1", text("an address or host name"), "Listening",
        "Listen address; `0.0.0.0` to serve the network.",
    )  # fmt: skip
    port: int = setting(
        "PORT", 8000, whole(0, 65535), "Listening",
        'Listen port (`0`: any free one, named in the "listening on" log line).',
    )  # fmt: skip
    base_path: str = setting(
        "BASE_PATH", "/api", PATH, "Listening",
        "Path clients use for Ollama's `/api`; `/ollama/api` maps `/ollama/api/chat` to"
        " Ollama's `/api/chat`.",
    )  # fmt: skip
    tls_cert_file: str | None = setting(
        "TLS_CERT_FILE", None, FILE, "Listening",
        "Serve HTTPS (TLS 1.2+) with this PEM certificate chain; with `TLS_KEY_FILE`, or"
        " neither. A file that cannot be read stops start-up with one line.",
    )  # fmt: skip
    tls_key_file: str | None = setting(
        "TLS_KEY_FILE", None, FILE, "Listening",
        "The private key (PEM) for `TLS_CERT_FILE`; both or neither.",
    )  # fmt: skip
    trusted_proxies: tuple[Network, ...] = setting(
        "TRUSTED_PROXIES", (), NETWORKS, "Listening",
        "Proxies in front of the gateway. Only a request whose socket peer is one of them has"
        " its `X-Forwarded-Proto`, `-Host` and `-For` (or RFC 7239 `Forwarded`) believed: for"
        " the dashboard's origin check, the Secure cookie, the access line's `client=` and the"
        " per-address sign-in limit. The client is the first address, from the right of"
        " `X-Forwarded-For`, that is not a trusted proxy. Unset: the socket's peer, and no"
        " forwarded header counts.",
    )  # fmt: skip
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", (), ORIGINS, "Listening",
        "Browser origins allowed to call the gateway. Unset: no CORS headers.",
    )  # fmt: skip
    metrics: str = setting(
        "METRICS", "off", choice("off", "on", "admin"), "Listening",
        "`/metrics` in Prometheus's format: `on` for anyone who can reach the gateway,"
        " `admin` for an admin key only (see [Metrics](logs-metrics.md)), `off` not served.",
    )  # fmt: skip
    idle_timeout: float = setting(
        "IDLE_TIMEOUT", 30.0, SECONDS, "Listening",
        "Seconds a connection may take to send a whole request head after it opens or after"
        " its last answer, however slowly it trickles; then it is closed. Heads are also"
        " bounded in size: at most 64 headers of 8 KiB each.",
    )  # fmt: skip
    shutdown_timeout: float = setting(
        "SHUTDOWN_TIMEOUT", 10.0, SECONDS, "Listening",
        "Seconds a graceful stop (SIGTERM, SIGINT) gives open requests.",
    )  # fmt: skip

    token_db_path: str = setting(
        "TOKEN_DB_PATH", "tokens.db", FILE, "Database and usage",
        "The SQLite key database (created with mode 0600, WAL). A relative path is relative"
        " to the folder of the `.env` that sets it (from the environment: to the current"
        " folder); the default is beside the `.env` in use, else in the project folder.",
    )  # fmt: skip
    database_url: str | None = setting(
        "DATABASE_URL", None, DATABASE_URL, "Database and usage",
        "Keep keys and usage in PostgreSQL (see [Several gateways](postgresql.md));"
        " `sqlite:///path` is the same as `TOKEN_DB_PATH=path`. Unset: the `TOKEN_DB_PATH`"
        " file. The password never appears in a log line, an error or `/health`.",
    )  # fmt: skip
    limits_when_database_away: str = setting(
        "LIMITS_WHEN_DATABASE_AWAY", "local", choice("local", "refuse"), "Database and usage",
        "PostgreSQL only: while the database cannot be reached, `local` admits keys with"
        " limits on this gateway's own counts, `refuse` answers them 503 (see"
        " [Several gateways](postgresql.md)).",
    )  # fmt: skip
    heartbeat_interval: float = setting(
        "HEARTBEAT_INTERVAL", 2.0, SECONDS, "Database and usage",
        "PostgreSQL only: seconds between a gateway's \"alive\" notes in the database.",
    )  # fmt: skip
    dead_gateway_after: float = setting(
        "DEAD_GATEWAY_AFTER", 15.0, SECONDS, "Database and usage",
        "PostgreSQL only: the silence (seconds) after which a gateway counts as gone and"
        " what its requests held (slots, reservations) is given back; at least twice"
        " `HEARTBEAT_INTERVAL`.",
    )  # fmt: skip
    usage_journal_dir: str | None = setting(
        "USAGE_JOURNAL_DIR", None, text("a folder path"), "Database and usage",
        "Folder (mode 0700) of the usage journal: each finished usage record is written here"
        " at once, before the database has it (see [Usage](keys-limits-usage.md#usage)).",
        shown_default="`TOKEN_DB_PATH` + `.usage-journal`",
    )  # fmt: skip
    usage_memory_records: int = setting(
        "USAGE_MEMORY_RECORDS", 100_000, whole(0, 10**8), "Database and usage",
        "Usage records held in memory while the journal cannot take them (its disk full). At"
        " this many, new requests are refused with 503 `storage_full` rather than served"
        " unrecorded; an admin's `/health` shows how many wait.",
    )  # fmt: skip
    usage_retention_days: int = setting(
        "USAGE_RETENTION_DAYS", 90, whole(0, 36500), "Database and usage",
        "Usage records (and their hourly sums) older than this are pruned, by whole hours,"
        " once an hour; `0` keeps them.",
    )  # fmt: skip

    log_level: str = setting("LOG_LEVEL", "INFO", LOG_LEVEL, "Logging", "Console log level.")
    log_file: str | None = setting(
        "LOG_FILE", None, FILE, "Logging",
        "Also log to this file (reopened after logrotate moves it).",
    )  # fmt: skip
    log_file_level: str = setting(
        "LOG_FILE_LEVEL", "INFO", LOG_LEVEL, "Logging", "Level for `LOG_FILE`."
    )

    max_body_bytes: int = setting(
        "MAX_BODY_SIZE", 100 * 1024**2, SIZE, "Request bodies",
        "Largest request body, after decoding a compressed one; larger: 413. Blob uploads"
        " are streamed and not limited.",
    )  # fmt: skip
    max_body_memory: int = setting(
        "MAX_BODY_MEMORY", 1024**3, SIZE, "Request bodies",
        "Request-body bytes held in memory by all requests together (at least"
        " `MAX_BODY_SIZE`), counted as they arrive, not as declared. Beyond it a request"
        " waits its turn (keys are served in turn, so one key's many bodies do not stand"
        " before another's) up to 2 s, then gets 503 with `Retry-After` and reason"
        " `body_memory_full`. Blob uploads stream through and hold none.",
    )  # fmt: skip
    # None: see body_memory_per_key.
    max_body_memory_per_key: int | None = setting(
        "MAX_BODY_MEMORY_PER_KEY", None, SIZE, "Request bodies",
        "Request-body bytes one key's requests may hold at once (between `MAX_BODY_SIZE` and"
        " `MAX_BODY_MEMORY`). A body with a `Content-Length` commits that length to its key's"
        " share before it is read, so a key starts no more bodies than its share can finish;"
        " the rest wait, up to 10 s in all (then 503, naming this setting).",
        shown_default="a quarter of `MAX_BODY_MEMORY`, at least `MAX_BODY_SIZE`",
    )  # fmt: skip
    body_min_rate: int = setting(
        "BODY_MIN_RATE", 16 * 1024, RATE, "Request bodies",
        "Bytes a second a request body read into memory must keep up over any 10 s, once it"
        " is 10 s old; a slower one (a byte now and then, or nothing) gets 408 with reason"
        " `slow_body`, frees its memory, and its connection is closed. Time spent waiting for"
        " body memory is not held against it.",
    )  # fmt: skip

    default_rpm: int = setting(
        "DEFAULT_RPM", 0, whole(0, 10**9), "Limits and budgets",
        "Requests per minute for keys without their own limit; `0`: none.",
    )  # fmt: skip
    default_rph: int = setting(
        "DEFAULT_RPH", 0, whole(0, 10**9), "Limits and budgets",
        "Requests per hour for keys without their own limit; `0`: none.",
    )  # fmt: skip
    default_tokens_per_day: int = setting(
        "DEFAULT_TOKENS_PER_DAY", 0, whole(0, 10**12), "Limits and budgets",
        "Prompt + completion tokens per UTC day for keys without their own; `0`: none.",
    )  # fmt: skip
    default_max_concurrent: int = setting(
        "DEFAULT_MAX_CONCURRENT", 0, whole(0, 10**6), "Limits and budgets",
        "Requests at once per key, for keys without their own; `0`: none.",
    )  # fmt: skip
    token_reserve: int = setting(
        "TOKEN_RESERVE", 2048, whole(1, 10**7), "Limits and budgets",
        "Output tokens reserved against a key's token quota by a request that sets no"
        " `num_predict`/`max_tokens` of its own (see"
        " [Token quotas](keys-limits-usage.md#token-quotas)).",
    )  # fmt: skip
    budget_time_reserve: int = setting(
        "BUDGET_TIME_RESERVE", 60, whole(0, 86400), "Limits and budgets",
        "Seconds of model time a request of a model priced per second reserves against its"
        " budgets while it runs (its real time is known only when it ends).",
    )  # fmt: skip
    currency: str = setting(
        "CURRENCY", DEFAULT_CURRENCY, CURRENCY, "Limits and budgets",
        "The currency of prices and costs; prices and budgets are whole micro-units of it,"
        " costs whole nano-units.",
    )  # fmt: skip

    admin_path: str = setting(
        "ADMIN_PATH", "/admin", PATH, "Admin API and dashboard",
        "Prefix of the admin HTTP API; must not overlap `BASE_PATH`.",
    )  # fmt: skip
    seed_api: str = setting(
        "SEED_API", "on", choice("on", "off"), "Admin API and dashboard",
        "The API of the systems the gateway replaces (`/api/models`, `/api/stats`,"
        " `/api/keys`, `/api/admin/stats` under `BASE_PATH`; see docs/compat-api.md):"
        " `on` serves it, `off` answers 404.",
    )  # fmt: skip
    gateway_admin_key: str | None = setting(
        "GATEWAY_ADMIN_KEY", None, SECRET, "Admin API and dashboard",
        "A bootstrap admin key, hashed at start-up, never logged; usage is recorded under"
        " key id 0.",
    )  # fmt: skip
    ui_path: str | None = setting(
        "UI_PATH", "/ui", UI_PATH, "Admin API and dashboard",
        "Where the dashboard is served; `off` turns it off, and with it sign-in by session"
        " cookie. Must not overlap `BASE_PATH`, `ADMIN_PATH` or `/v1`.",
    )  # fmt: skip
    session_idle_minutes: int = setting(
        "SESSION_IDLE_MINUTES", 30, whole(1, 7 * 24 * 60), "Admin API and dashboard",
        "A dashboard session unused this long ends.",
    )  # fmt: skip
    session_max_hours: int = setting(
        "SESSION_MAX_HOURS", 12, whole(1, 720), "Admin API and dashboard",
        "A dashboard session ends this long after sign-in, used or not.",
    )  # fmt: skip
    session_cookie_secure: str = setting(
        "SESSION_COOKIE_SECURE", "auto", choice("auto", "true", "false"),
        "Admin API and dashboard",
        "Mark the session cookie `Secure`: `auto` when the gateway itself serves HTTPS or,"
        " behind a proxy in `TRUSTED_PROXIES`, when its `X-Forwarded-Proto` says `https`;"
        " `true` always; `false` never.",
    )  # fmt: skip

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
        read: dict[str, Any] = {}
        for each in fields(cls):
            how = declaration_of(each)
            if how is not None:
                read[each.name] = _read(how, each.default, values)
        settings = cls(**read, upstreams=_upstreams_file(read["upstreams_file"], values))
        _check_together(settings)
        return settings


def declarations() -> list[Declared]:
    """Every setting, in the order `Settings` declares them."""
    return [d for d in map(declaration_of, fields(Settings)) if d is not None]


def _read(how: Declared, default: object, values: Mapping[str, str]) -> object:
    raw = values.get(how.variable)
    if raw is None or raw.strip() == "":
        return default
    return how.parse(how.variable, raw.strip())


def read_one(variable: str, values: Mapping[str, str]) -> object:
    """One setting from `values`, parsed by its declaration alone: what a CLI reads, so
    a bad value of a setting it does not use cannot stop it."""
    for each in fields(Settings):
        how = declaration_of(each)
        if how is not None and how.variable == variable:
            return _read(how, each.default, values)
    raise KeyError(variable)


def _check_together(settings: Settings) -> None:
    """The rules that tie settings to each other."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE: set both to serve HTTPS, or neither")
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
    if per_key is not None and not settings.max_body_bytes <= per_key <= settings.max_body_memory:
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


def _apart(name: str, path: str, *others: tuple[str, str]) -> None:
    """`path` neither is nor holds nor lies under any of `others`."""
    for other_name, other in others:
        if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
            raise SettingsError(
                f"{name}: expected a path apart from {other_name} ({other}), got {path!r}"
            )


# --- where settings come from ------------------------------------------------------------


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


def _upstreams_file(path: str | None, values: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    """UPSTREAMS_FILE's upstreams, their keys read from the environment and .env."""
    if path is None:
        return ()
    try:
        return upstreams_from_file(path, values)
    except UpstreamsError as exc:
        raise SettingsError(str(exc)) from None


# --- what the CLIs read: each only the settings it uses ----------------------------------


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
    path = Path(str(read_one("TOKEN_DB_PATH", merged_environment({}, env_path))))
    base = Path(env_path).resolve().parent if env_path is not None else PROJECT_DIR
    if path.is_absolute() or base is None:
        return str(path)
    return str(base / path)


def database_target(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """The database the server would open, for the CLIs: DATABASE_URL from the
    environment or the `.env` file, else the TOKEN_DB_PATH file (see token_db_path)."""
    env_path = find_env_file() if env_file == AUTO else env_file
    url = read_one("DATABASE_URL", merged_environment(environ, env_path))
    return str(url) if url is not None else token_db_path(environ, env_path)


def currency_setting(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """CURRENCY as the server reads it, for the CLIs' reports."""
    env_path = find_env_file() if env_file == AUTO else env_file
    return str(read_one("CURRENCY", merged_environment(environ, env_path)))


def ollama_setting(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> list[tuple[str, dict[str, str]]]:
    """Every Ollama the server relays to (UPSTREAMS_FILE's, else OLLAMA_BASE_URL's), each
    with the headers that authenticate the gateway to it, for the CLIs' model sync."""
    env_path = find_env_file() if env_file == AUTO else env_file
    merged = _files_beside_env(merged_environment(environ, env_path), environ, env_path)
    file = read_one("UPSTREAMS_FILE", merged)
    found = _upstreams_file(None if file is None else str(file), merged)
    if not found:
        urls = str(read_one("OLLAMA_BASE_URL", merged))
        key = read_one("UPSTREAM_API_KEY", merged)
        found = upstreams_from_urls(urls, None if key is None else str(key))
    return [(u.url, auth_headers(u)) for u in found if u.kind == "ollama"]


def log_level_number(level: str) -> int:
    return logging.getLevelNamesMapping()[level]


# --- the reference: docs/settings.md -----------------------------------------------------

REFERENCE_COMMAND = "python -m aigateway.settings --markdown > docs/settings.md"

_ABOUT = """\
Read from the environment, then `.env` (created from `.env.example` by `./run.sh`), then
the defaults. A bad value stops start-up with one line naming the variable and what was
expected. The `.env` read is the one in the current folder, else the one in the project
folder (where `run.sh` is), so the server and both CLIs find the same settings and
database wherever they are started from; a CLI reads only the settings it uses, so a bad
server setting does not stop it. A blank value is the same as unset.

The server also takes `--host`, `--port`, `--env-file FILE` and `--init-db` (create and
migrate the database, then exit)."""


def markdown_reference() -> str:
    """docs/settings.md, from the declarations."""
    lines = [
        "# Settings reference",
        "",
        f"<!-- Generated from aigateway/settings.py by `{REFERENCE_COMMAND}`;",
        "     edit the declarations there, not this page (a test fails when it is stale). -->",
        "",
        _ABOUT,
    ]
    for group in GROUPS:
        lines += ["", f"## {group}", "", "| Variable | Default | Accepts | Meaning |"]
        lines.append("|---|---|---|---|")
        for each in fields(Settings):
            how = declaration_of(each)
            if how is None or how.group != group:
                continue
            shown = how.shown_default or f"`{how.parse.show(each.default)}`"
            if shown == "`unset`":
                shown = "unset"
            cells = (f"`{how.variable}`", shown, how.parse.accepts, how.help)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        sys.stderr.write(f"usage: {REFERENCE_COMMAND}\n")
        return 2
    sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
