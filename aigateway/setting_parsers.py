"""What a setting's text may be: one parser per kind of value (a whole number within
bounds, seconds, a size, URLs, networks, model patterns, ...), each saying what it accepts
for the reference, and a `SettingsError` naming the variable when the text will not do.
The declarations that use them are in settings.py."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Generic, TypeVar

from yarl import URL

from .protocol.routes import CACHEABLE_PATHS, EMBEDDING_PATHS
from .upstreams.config import MAX_PATTERNS, UpstreamsError, check_url, upstreams_from_urls

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:I?B)?\s*$", re.IGNORECASE)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
OFF = "off"
T_co = TypeVar("T_co", covariant=True)


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use."""


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


# The least memory a cache that is on may have: below it, an eighth (its largest answer)
# holds too few embeddings to be worth keeping, and `CACHE_SIZE=256` (256 bytes, the M
# forgotten) would turn on a cache that keeps nothing and says "miss" to every request.
CACHE_SIZE_LEAST = 1024**2


def _size_or_off(name: str, raw: str) -> int:
    """A size of at least CACHE_SIZE_LEAST, or `0`/`off`: the feature is off."""
    if raw.strip().lower() in ("0", "off"):
        return 0
    size = _size(name, raw)
    if size < CACHE_SIZE_LEAST:
        raise SettingsError(
            f"{name}: expected 0 (off) or at least 1M, with its unit (`256M`), got {raw!r}"
        )
    return size


def _cache_routes(name: str, raw: str) -> tuple[str, ...]:
    """Ollama paths whose answers the cache may keep, comma-separated; `embeddings` is
    short for the three embedding routes."""
    paths: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        found = EMBEDDING_PATHS if part == "embeddings" else (part,) if part else ()
        for path in found:
            if path not in CACHEABLE_PATHS:
                raise SettingsError(
                    f"{name}: expected Ollama paths among {', '.join(CACHEABLE_PATHS)}"
                    f" (or `embeddings`), comma-separated, got {part!r}"
                )
            if path not in paths:
                paths.append(path)
    if not paths:
        raise SettingsError(f"{name}: expected at least one path, got {raw!r}")
    return tuple(paths)


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


def _api_key(name: str, raw: str) -> str:
    """A provider's key, sent in a header: one line without spaces. The message never
    shows it."""
    if not raw.isprintable() or " " in raw:
        raise SettingsError(f"{name}: expected one API key, without spaces or line breaks")
    return raw


def _model_patterns(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated model name patterns (`gpt-4*, o3*`), as an allow-list's."""
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip())
    if (
        not patterns
        or len(patterns) > MAX_PATTERNS
        or not all(len(p) <= 200 and p.isprintable() and " " not in p for p in patterns)
    ):
        raise SettingsError(
            f"{name}: expected 1 to {MAX_PATTERNS} model name patterns separated by commas,"
            f" such as gpt-4*,o3*, got {raw!r}"
        )
    return patterns


def _patterns_shown(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else _shown(value)


def _cloud_url(name: str, raw: str) -> str:
    """A cloud API's URL; its key is a setting of its own, never part of the URL."""
    try:
        url = check_url(name, raw)
    except UpstreamsError as exc:
        raise SettingsError(str(exc)) from None
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise SettingsError(f"{name}: expected a URL without a user or password")
    return url


def _database_url(_name: str, raw: str) -> str:
    # Imported here: the SQL toolkit is heavy, and only a DATABASE_URL needs it.
    from .db.url import DatabaseURLError, database_from

    try:
        database_from(raw)
    except DatabaseURLError as exc:
        raise SettingsError(str(exc)) from None
    return raw


def _webhook_url(name: str, raw: str) -> str:
    """Where alerts are posted: an http(s) URL (a query too: some receivers put their
    token there). It is a secret (a Slack webhook URL is its own key): never shown."""
    try:
        url = URL(raw)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise SettingsError(f"{name}: expected an http:// or https:// URL")
    if url.fragment or not raw.isprintable() or " " in raw:
        raise SettingsError(f"{name}: expected a URL without a fragment or spaces")
    return raw


def _kind_url(name: str, raw: str) -> str:
    """A per-kind alert URL, or `off`: that kind is not sent even with ALERT_WEBHOOK_URL."""
    return OFF if raw.lower() == OFF else _webhook_url(name, raw)


def _refusal_rule(name: str, raw: str) -> tuple[int, int] | None:
    """ALERT_REFUSALS: `N/M` (N refusals of one key within M minutes), or `off`."""
    if raw.lower() == OFF:
        return None
    count, slash, minutes = raw.partition("/")
    try:
        rule = (int(count), int(minutes)) if slash else None
    except ValueError:
        rule = None
    if rule is None or not 1 <= rule[0] <= 100_000 or not 1 <= rule[1] <= 1440:
        raise SettingsError(
            f"{name}: expected N/M (N refusals from 1 to 100000 within M minutes from 1 to"
            f" 1440, such as 20/5) or off, got {raw!r}"
        )
    return rule


def _rule_shown(value: object) -> str:
    return f"{value[0]}/{value[1]}" if isinstance(value, tuple) else OFF


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
SIZE_OR_OFF = Parser(
    _size_or_off,
    "bytes, or with `K`, `M` or `G` (`256M`), at least `1M`; `0` or `off`: off",
    _bytes_shown,
)
CACHE_ROUTES = Parser(
    _cache_routes,
    "Ollama paths, comma-separated, among " + ", ".join(f"`{p}`" for p in CACHEABLE_PATHS),
    _patterns_shown,
)
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
API_KEY = Parser(_api_key, "an API key (never logged or shown)")
MODEL_PATTERNS = Parser(
    _model_patterns, "model name patterns (`*`, `?`), comma-separated", _patterns_shown
)
CLOUD_URL = Parser(_cloud_url, "an `http://` or `https://` URL")
WEBHOOK_URL = Parser(_webhook_url, "an `http://` or `https://` URL (never shown)")
KIND_URL = Parser(_kind_url, "an `http://` or `https://` URL (never shown), or `off`")
REFUSAL_RULE = Parser(
    _refusal_rule, "`N/M`: N refusals within M minutes (`20/5`), or `off`", _rule_shown
)
