"""Gateway settings: the environment first, then `.env`, then defaults.

Each setting is declared once, as a field of `Settings` made by `setting(...)`: its
variable, default, parser (what it accepts, with its bounds), group and one line of help.
The server reads them all (`Settings.from_env()`); a CLI reads only those it uses
(`currency_setting`, `database_target`, `ollama_setting`), so a bad server-only setting
does not stop it; `python -m aigateway.settings_reference --markdown` writes
docs/settings.md.

Nothing here runs at import time. A bad value raises `SettingsError` whose message names
the variable and what was expected, so start-up can stop with one clear line; what each
kind of value may be is in setting_parsers.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values

from .protocol.routes import EMBEDDING_PATHS
from .setting_parsers import (
    API_KEY,
    BOOLEAN,
    CACHE_ROUTES,
    CLOUD_URL,
    CURRENCY,
    DATABASE_URL,
    FILE,
    KIND_URL,
    LOG_LEVEL,
    MODEL_PATTERNS,
    NETWORKS,
    OFF,
    OLLAMA_URLS,
    ORIGINS,
    PATH,
    RATE,
    REFUSAL_RULE,
    SECONDS,
    SECRET,
    SIZE,
    SIZE_OR_OFF,
    UI_PATH,
    WEBHOOK_URL,
    Parser,
    choice,
    text,
    whole,
)

# Part of what this module offers: imported from here by the rest of the package.
from .setting_parsers import Network as Network
from .setting_parsers import SettingsError as SettingsError
from .upstreams.config import (
    UpstreamConfig,
    UpstreamsError,
    auth_headers,
    provider_upstream,
    upstreams_from_file,
    upstreams_from_urls,
)

# Read a .env the usual way (see find_env_file); None reads none.
AUTO = "auto"
_HERE = Path(__file__).resolve().parent.parent
PROJECT_DIR: Path | None = _HERE if (_HERE / "run.sh").is_file() else None
DEFAULT_CURRENCY = "USD"
# The models OPENAI_API_KEY's upstream serves by default: OpenAI's chat, reasoning and
# embedding families, each by its own prefix rather than `gpt-*`, which would also take
# `gpt-oss`, a model Ollama runs locally. Anthropic names every model `claude-...`.
OPENAI_MODELS = (
    "gpt-3.5*", "gpt-4*", "gpt-5*", "o1*", "o3*", "o4*", "chatgpt-*", "text-embedding-*",
)  # fmt: skip
ANTHROPIC_MODELS = ("claude-*",)
# What OPENAI_API_KEY and ANTHROPIC_API_KEY bring along: kept out of the tests' environment.
PROVIDER_VARIABLES = (
    "OPENAI_API_KEY", "OPENAI_MODELS", "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY", "ANTHROPIC_MODELS", "ANTHROPIC_BASE_URL",
)  # fmt: skip

T = TypeVar("T")


# Where admin/docs.py serves the API's Swagger UI (beside /openapi.json and /redoc).
DOCS_PATH = "/docs"


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
    "Response cache",
    "Alerts",
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
    secret: bool = False,
) -> T:
    """A `Settings` field read from `variable` (unset or blank: `default`). A `secret`
    one is left out of the settings' repr, so no log line or traceback shows it."""
    assert group in GROUPS, group
    declaration = Declared(variable, parse, group, help, shown_default)
    return field(default=default, repr=not secret, metadata={"setting": declaration})


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
        secret=True,
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
    openai_api_key: str | None = setting(
        "OPENAI_API_KEY", None, API_KEY, "Upstreams",
        "Without `UPSTREAMS_FILE`: adds an upstream `openai` (kind `openai`, at"
        " `OPENAI_BASE_URL`) beside Ollama, which gets this key as `Authorization: Bearer`"
        " and serves `OPENAI_MODELS` only to keys whose allow-list names them (see"
        " [Cloud APIs](upstreams.md#cloud-apis)). With `UPSTREAMS_FILE`: ignored, with a"
        " warning, unless an entry's `key_env` names it.",
        secret=True,
    )  # fmt: skip
    openai_models: tuple[str, ...] = setting(
        "OPENAI_MODELS", OPENAI_MODELS, MODEL_PATTERNS, "Upstreams",
        "The models the `OPENAI_API_KEY` upstream serves. The default leaves out `gpt-oss`,"
        " which Ollama runs.",
    )  # fmt: skip
    openai_base_url: str = setting(
        "OPENAI_BASE_URL", "https://api.openai.com/v1", CLOUD_URL, "Upstreams",
        "Where the `OPENAI_API_KEY` upstream is, as the OpenAI SDK reads this variable: an"
        " OpenAI-compatible API's URL, ending in its version.",
    )  # fmt: skip
    anthropic_api_key: str | None = setting(
        "ANTHROPIC_API_KEY", None, API_KEY, "Upstreams",
        "Without `UPSTREAMS_FILE`: adds an upstream `anthropic` (kind `anthropic`, at"
        " `ANTHROPIC_BASE_URL`) beside Ollama, which gets this key as `x-api-key` and serves"
        " `ANTHROPIC_MODELS` only to keys whose allow-list names them. With `UPSTREAMS_FILE`:"
        " ignored, with a warning, unless an entry's `key_env` names it.",
        secret=True,
    )  # fmt: skip
    anthropic_models: tuple[str, ...] = setting(
        "ANTHROPIC_MODELS", ANTHROPIC_MODELS, MODEL_PATTERNS, "Upstreams",
        "The models the `ANTHROPIC_API_KEY` upstream serves.",
    )  # fmt: skip
    anthropic_base_url: str = setting(
        "ANTHROPIC_BASE_URL", "https://api.anthropic.com", CLOUD_URL, "Upstreams",
        "Where the `ANTHROPIC_API_KEY` upstream is, as the Anthropic SDK reads this variable:"
        " without the `/v1`, which the gateway adds (a URL that ends in `/v1` is taken as"
        " it is).",
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
        "The SQLite key database (created with mode 0600, WAL; its missing folders with mode"
        " 0700, each). A relative path is relative to the folder of the `.env` that sets it"
        " (from the environment: to the current folder); the default is beside the `.env` in"
        " use, else in the project folder.",
    )  # fmt: skip
    database_url: str | None = setting(
        "DATABASE_URL", None, DATABASE_URL, "Database and usage",
        "Keep keys and usage in PostgreSQL (see [Several gateways](postgresql.md));"
        " `sqlite:///path` is the same as `TOKEN_DB_PATH=path` (a relative path too:"
        " `sqlite:///./data/x.db` in a `.env` is in `data/` beside it). Unset: the"
        " `TOKEN_DB_PATH` file. The password never appears in a log line, an error or"
        " `/health`.",
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
        shown_default="beside the SQLite file in use (on PostgreSQL: `TOKEN_DB_PATH`'s):"
        " its path + `.usage-journal`",
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
    self_service_keys: int = setting(
        "SELF_SERVICE_KEYS", 0, whole(0, 1000), "Admin API and dashboard",
        "How many active keys a user-role key may make of its own user (`/admin/me/keys`,"
        " the dashboard's My keys), each no more than its maker may do; `0`: none, the"
        " feature is off (see [Self-service keys](keys-limits-usage.md#self-service-keys)).",
    )  # fmt: skip
    gateway_admin_key: str | None = setting(
        "GATEWAY_ADMIN_KEY", None, SECRET, "Admin API and dashboard",
        "A bootstrap admin key, hashed at start-up, never logged; usage is recorded under"
        " key id 0.",
        secret=True,
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

    cache_bytes: int = setting(
        "CACHE_SIZE", 0, SIZE_OR_OFF, "Response cache",
        "Memory for answers kept to repeat (see [Response cache](cache.md)); `0`: off. The"
        " least recently used go first; an answer larger than an eighth of it is not kept.",
    )  # fmt: skip
    cache_ttl: float = setting(
        "CACHE_TTL", 3600.0, SECONDS, "Response cache", "Seconds a kept answer is repeated."
    )
    cache_routes: tuple[str, ...] = setting(
        "CACHE_ROUTES", EMBEDDING_PATHS, CACHE_ROUTES, "Response cache",
        "The routes whose answers are kept (`embeddings`: the three embedding routes); the"
        " generation routes only for a request with temperature 0 and a seed.",
    )  # fmt: skip
    cache_models: tuple[str, ...] = setting(
        "CACHE_MODELS", ("*",), MODEL_PATTERNS, "Response cache",
        "The models whose answers are kept, as an allow-list names them.",
    )  # fmt: skip
    cache_scope: str = setting(
        "CACHE_SCOPE", "user", choice("user", "key", "global"), "Response cache",
        "Who shares kept answers: a user's keys (a key without a user: itself), each key"
        " alone, or everyone (`global`: one tenant could tell by the timing what another"
        " sent).",
    )  # fmt: skip
    cache_hit_price: str = setting(
        "CACHE_HIT_PRICE", "free", choice("free", "full"), "Response cache",
        "What an answer from the cache costs: nothing, or (`full`) what the request it"
        " repeats cost by the model's prices now.",
    )  # fmt: skip

    alert_webhook_url: str | None = setting(
        "ALERT_WEBHOOK_URL", None, WEBHOOK_URL, "Alerts",
        "Where alerts are posted (see [Alerts](alerts.md)): every kind not given a URL of its"
        " own below. Unset, with none of those: no alerts, and nothing is spent on them.",
        secret=True,
    )  # fmt: skip
    alert_budget_url: str | None = setting(
        "ALERT_BUDGET_URL", None, KIND_URL, "Alerts",
        "Where `budget_alert` (a budget's alert percentage reached) and `budget_exhausted`"
        " go; `off`: not sent.",
        shown_default="`ALERT_WEBHOOK_URL`",
        secret=True,
    )  # fmt: skip
    alert_upstream_url: str | None = setting(
        "ALERT_UPSTREAM_URL", None, KIND_URL, "Alerts",
        "Where `upstream_down` and `upstream_up` go; `off`: not sent.",
        shown_default="`ALERT_WEBHOOK_URL`",
        secret=True,
    )  # fmt: skip
    alert_key_expiry_url: str | None = setting(
        "ALERT_KEY_EXPIRY_URL", None, KIND_URL, "Alerts",
        "Where `key_expiring` goes; `off`: not sent.",
        shown_default="`ALERT_WEBHOOK_URL`",
        secret=True,
    )  # fmt: skip
    alert_refusals_url: str | None = setting(
        "ALERT_REFUSALS_URL", None, KIND_URL, "Alerts",
        "Where `key_refusals` goes; `off`: not sent.",
        shown_default="`ALERT_WEBHOOK_URL`",
        secret=True,
    )  # fmt: skip
    alert_webhook_format: str = setting(
        "ALERT_WEBHOOK_FORMAT", "json", choice("json", "slack"), "Alerts",
        "`json`: the alert as a JSON object; `slack`: `{\"text\": ...}`, what Slack's (and"
        " Mattermost's, Rocket.Chat's) incoming webhooks take.",
    )  # fmt: skip
    alert_webhook_secret: str | None = setting(
        "ALERT_WEBHOOK_SECRET", None, SECRET, "Alerts",
        "Signs every alert: `X-Aigateway-Signature: t=TIME,v1=HEX`, the HMAC-SHA256 of"
        " `TIME.BODY` with this secret. Required with `ALERT_WEBHOOK_FORMAT=json`.",
        secret=True,
    )  # fmt: skip
    alert_key_expiry_days: int = setting(
        "ALERT_KEY_EXPIRY_DAYS", 7, whole(0, 3650), "Alerts",
        "A working key that expires within this many days raises `key_expiring` (once per"
        " key and expiry date); `0`: never.",
    )  # fmt: skip
    alert_refusals: tuple[int, int] | None = setting(
        "ALERT_REFUSALS", (20, 5), REFUSAL_RULE, "Alerts",
        "`N/M`: N refusals of one key within M minutes, counted by each gateway on its own,"
        " raise `key_refusals` (once per key and M-minute window).",
    )  # fmt: skip
    alert_allow_private_urls: bool = setting(
        "ALERT_ALLOW_PRIVATE_URLS", False, BOOLEAN, "Alerts",
        "Post alerts to loopback, private and link-local addresses too (a receiver inside"
        " your network). Off: such a URL is refused when it is sent, after its name is"
        " resolved. Cloud metadata addresses are refused either way.",
    )  # fmt: skip

    @property
    def body_memory_per_key(self) -> int:
        if self.max_body_memory_per_key is not None:
            return self.max_body_memory_per_key
        return max(self.max_body_memory // 4, self.max_body_bytes)

    @property
    def alert_urls(self) -> dict[str, str]:
        """Where each kind of alert goes (a kind left out is not sent): empty with alerts
        off."""
        kinds = {
            "budget_alert": self.alert_budget_url,
            "budget_exhausted": self.alert_budget_url,
            "upstream_down": self.alert_upstream_url,
            "upstream_up": self.alert_upstream_url,
            "key_expiring": self.alert_key_expiry_url if self.alert_key_expiry_days else OFF,
            "key_refusals": self.alert_refusals_url if self.alert_refusals else OFF,
        }
        urls = {kind: url or self.alert_webhook_url for kind, url in kinds.items()}
        return {kind: url for kind, url in urls.items() if url is not None and url != OFF}

    @property
    def database(self) -> str:
        """What the store opens: DATABASE_URL, else the TOKEN_DB_PATH file."""
        return self.database_url or self.token_db_path

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    def local_url(self, port: int) -> str:
        """Where this machine reaches the gateway listening on `port`: HOST, or 127.0.0.1
        for a HOST that means every address (0.0.0.0, ::)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def dashboard_url(self, port: int) -> str | None:
        """The dashboard's page, or None with `UI_PATH=off`."""
        return None if self.ui_path is None else f"{self.local_url(port)}{self.ui_path}/"

    def docs_url(self, port: int) -> str:
        """The API's Swagger UI page."""
        return self.local_url(port) + DOCS_PATH

    @property
    def upstream_list(self) -> tuple[UpstreamConfig, ...]:
        """Where requests go: UPSTREAMS_FILE's upstreams, else OLLAMA_BASE_URL's and those
        OPENAI_API_KEY and ANTHROPIC_API_KEY add."""
        if self.upstreams:
            return self.upstreams
        ollamas = upstreams_from_urls(self.ollama_base_url, self.upstream_api_key)
        return ollamas + self.provider_upstreams

    @property
    def provider_upstreams(self) -> tuple[UpstreamConfig, ...]:
        """The cloud upstreams OPENAI_API_KEY and ANTHROPIC_API_KEY add (none when
        UPSTREAMS_FILE lists the upstreams)."""
        if self.upstreams:
            return ()
        found: list[UpstreamConfig] = []
        if self.openai_api_key:
            found.append(
                provider_upstream(
                    "openai", self.openai_api_key, self.openai_base_url, self.openai_models
                )
            )
        if self.anthropic_api_key:
            found.append(
                provider_upstream(
                    "anthropic",
                    self.anthropic_api_key,
                    self.anthropic_base_url,
                    self.anthropic_models,
                )
            )
        return tuple(found)

    @property
    def ignored_provider_settings(self) -> tuple[str, ...]:
        """The PROVIDER_VARIABLES set (to other than their defaults) that do nothing,
        since UPSTREAMS_FILE lists the upstreams; a key an entry's key_env names is used
        there, so it is not among them."""
        if not self.upstreams:
            return ()
        named = {u.key_env for u in self.upstreams}
        ignored: list[str] = []
        for each in fields(self):
            how = declaration_of(each)
            if how is None or how.variable not in PROVIDER_VARIABLES or how.variable in named:
                continue
            if getattr(self, each.name) != each.default:
                ignored.append(how.variable)
        return tuple(ignored)

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
    json_alerts = settings.alert_webhook_format == "json" and settings.alert_urls
    if json_alerts and settings.alert_webhook_secret is None:
        raise SettingsError(
            "ALERT_WEBHOOK_SECRET: expected a secret to sign the JSON alerts with"
            " (or ALERT_WEBHOOK_FORMAT=slack for a receiver that checks none)"
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


def _folder_of(
    variable: str, environ: Mapping[str, str] | None, env_path: str | Path | None
) -> Path | None:
    """The one rule for a relative path in a setting (TOKEN_DB_PATH, UPSTREAMS_FILE, a
    SQLite DATABASE_URL): one set in a `.env` file is relative to that file's folder, so
    the server and the CLIs find the same file wherever they start; one set in the
    environment (None here) is relative to the current folder, as a shell user means it."""
    environment = os.environ if environ is None else environ
    if environment.get(variable, "").strip() or env_path is None:
        return None
    return Path(env_path).resolve().parent


def _files_beside_env(
    merged: dict[str, str], environ: Mapping[str, str] | None, env_path: str | Path | None
) -> dict[str, str]:
    """UPSTREAMS_FILE and a SQLite DATABASE_URL with relative paths, as `_folder_of` says."""
    value = merged.get("UPSTREAMS_FILE", "").strip()
    folder = _folder_of("UPSTREAMS_FILE", environ, env_path)
    if value and folder is not None and not Path(value).is_absolute():
        merged = {**merged, "UPSTREAMS_FILE": str(folder / value)}
    value = merged.get("DATABASE_URL", "").strip()
    folder = _folder_of("DATABASE_URL", environ, env_path)
    if value and folder is not None:
        # Imported here: the SQL toolkit is heavy, and only a DATABASE_URL needs it.
        from .db.url import sqlite_in

        merged = {**merged, "DATABASE_URL": sqlite_in(folder, value)}
    return merged


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
    base = _folder_of("TOKEN_DB_PATH", environ, env_path) or PROJECT_DIR
    if path.is_absolute() or base is None:
        return str(path)
    return str(base / path)


def database_target(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = AUTO
) -> str:
    """The database the server would open, for the CLIs: DATABASE_URL from the
    environment or the `.env` file (a relative SQLite path read as the server reads it),
    else the TOKEN_DB_PATH file (see token_db_path)."""
    env_path = find_env_file() if env_file == AUTO else env_file
    merged = _files_beside_env(merged_environment(environ, env_path), environ, env_path)
    url = read_one("DATABASE_URL", merged)
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
