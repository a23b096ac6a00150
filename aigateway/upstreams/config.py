"""Which upstreams the gateway relays to: OLLAMA_BASE_URL (one URL, or several separated
by commas), or a TOML file named by UPSTREAMS_FILE:

    [[upstream]]
    name = "gpu1"                      # letters, digits, . _ -; unique
    kind = "ollama"                    # ollama (default), openai or anthropic
    url = "http://10.0.0.5:11434"
    key_env = "GPU1_KEY"               # the variable holding its key (cloud kinds: required)
    models = ["llama3*", "qwen3:8b"]   # patterns; an Ollama's are discovered when left out
    weight = 2                         # share of requests among equals (default 1)
    max_concurrent = 4                 # requests at once (default: no limit)
    open = false                       # cloud kinds: may every key use its models? (default:
                                       # only keys whose allow-list names them)
    pass_headers = ["anthropic-beta"]  # cloud kinds: client headers passed on besides
                                       # CLOUD_HEADERS (default: none)

Without UPSTREAMS_FILE, OPENAI_API_KEY and ANTHROPIC_API_KEY each add a cloud upstream beside
OLLAMA_BASE_URL's (provider_upstream), as such an entry with that key_env would.

Every value is checked here; a bad file stops start-up with one line naming the entry.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from yarl import URL

Kind = Literal["ollama", "openai", "anthropic"]
KINDS: tuple[Kind, ...] = ("ollama", "openai", "anthropic")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FIELDS = {
    "name",
    "kind",
    "url",
    "key_env",
    "models",
    "weight",
    "max_concurrent",
    "open",
    "pass_headers",
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # an RFC 9110 token
MAX_UPSTREAMS = 64
MAX_PATTERNS = 100
MAX_PASS_HEADERS = 32
# Sent to an Anthropic upstream always: a client's own goes on only if pass_headers names it.
ANTHROPIC_VERSION = "2023-06-01"
# The client headers a cloud API gets. It is paid with the gateway's key, so nothing that
# picks the account or its features (OpenAI-Organization, OpenAI-Project, anthropic-beta,
# anthropic-version, ...) goes on unless the upstream's pass_headers names it; nor does a
# trace's traceparent (which tells a third party how requests relate), traced or not.
CLOUD_HEADERS = frozenset({"content-type", "accept", "accept-encoding", "user-agent"})
# Never passed on, whatever pass_headers says: credentials, hop-by-hop headers, and what
# the gateway or aiohttp sets itself.
_NEVER_PASSED = frozenset(
    {
        "authorization",
        "x-api-key",
        "proxy-authorization",
        "cookie",
        "host",
        "origin",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "upgrade",
        "expect",
        "x-upstream",
    }
)


class UpstreamsError(ValueError):
    """The upstreams cannot be used as configured."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str  # without a trailing slash
    kind: Kind = "ollama"
    # The key the gateway presents to it (Bearer; x-api-key for anthropic), read from the
    # environment variable key_env at start-up; never a client's key.
    key: str | None = field(default=None, repr=False)
    key_env: str | None = None
    # Model patterns it serves; None: an Ollama's own list (/api/tags), refreshed.
    models: tuple[str, ...] | None = None
    weight: float = 1.0
    max_concurrent: int | None = None
    # A cloud API is paid with the gateway's key: its models are for the keys whose
    # allow-list names them, unless it is open to every key.
    open: bool = False
    # Cloud kinds: client headers (lower case) passed on besides CLOUD_HEADERS.
    pass_headers: frozenset[str] = frozenset()
    # What client headers may go on (lower case), worked out once here as the relay asks
    # on every request: None for an Ollama (all but the dropped ones).
    client_headers: frozenset[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        passed = frozenset(name.lower() for name in self.pass_headers)
        object.__setattr__(self, "pass_headers", passed)
        allowed = None if self.kind == "ollama" else CLOUD_HEADERS | passed
        object.__setattr__(self, "client_headers", allowed)

    @property
    def closed(self) -> bool:
        """A cloud API that only keys whose allow-list names its models may use."""
        return self.kind != "ollama" and not self.open


def auth_headers(config: UpstreamConfig) -> dict[str, str]:
    """How the gateway presents an upstream's own key (to its checks, with every request
    it relays there, and for the CLIs' model sync)."""
    if config.key is None:
        return {}
    if config.kind == "anthropic":
        return {"x-api-key": config.key, "anthropic-version": ANTHROPIC_VERSION}
    return {"Authorization": f"Bearer {config.key}"}


def upstreams_from_urls(raw: str, key: str | None) -> tuple[UpstreamConfig, ...]:
    """OLLAMA_BASE_URL: one URL ("ollama"), or several separated by commas ("ollama1",
    "ollama2", ...), each an Ollama whose models are discovered; UPSTREAM_API_KEY for all."""
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise UpstreamsError("OLLAMA_BASE_URL: expected at least one URL")
    if len(urls) > MAX_UPSTREAMS:
        raise UpstreamsError(f"OLLAMA_BASE_URL: at most {MAX_UPSTREAMS} URLs")
    named = ["ollama"] if len(urls) == 1 else [f"ollama{n}" for n in range(1, len(urls) + 1)]
    found = tuple(
        UpstreamConfig(name=name, url=check_url("OLLAMA_BASE_URL", url), key=key)
        for name, url in zip(named, urls, strict=True)
    )
    _unique_urls("OLLAMA_BASE_URL", found)
    return found


def provider_upstream(
    kind: Literal["openai", "anthropic"], key: str, url: str, models: tuple[str, ...]
) -> UpstreamConfig:
    """The upstream OPENAI_API_KEY or ANTHROPIC_API_KEY adds, named after its kind and
    closed as a file's entry is by default (only keys whose allow-list names its models
    use it). `url` is read as the provider's own SDK reads its *_BASE_URL, so that a
    value set for the SDK means the same here: OpenAI's ends in the API's version
    (`https://api.openai.com/v1`), Anthropic's does not (`https://api.anthropic.com`; one
    that ends in `/v1` all the same is taken as it is)."""
    if kind == "anthropic" and not url.endswith("/v1"):
        url += "/v1"
    return UpstreamConfig(
        name=kind, url=url, kind=kind, key=key, key_env=f"{kind.upper()}_API_KEY", models=models
    )


def upstreams_from_file(path: str, environ: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    """The upstreams a TOML file lists; keys read from `environ`."""
    where = f"UPSTREAMS_FILE {path}"
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UpstreamsError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamsError(f"{where}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"upstream"}
    if unknown:
        raise UpstreamsError(
            f"{where}: unknown table {sorted(unknown)[0]!r} (expected [[upstream]])"
        )
    entries = doc.get("upstream")
    if not isinstance(entries, list) or not entries:
        raise UpstreamsError(f"{where}: expected one or more [[upstream]] entries")
    if len(entries) > MAX_UPSTREAMS:
        raise UpstreamsError(f"{where}: at most {MAX_UPSTREAMS} upstreams")
    found = tuple(
        _entry(f"{where}, upstream #{n}", entry, environ) for n, entry in enumerate(entries, 1)
    )
    names = [u.name for u in found]
    for name in names:
        if names.count(name) > 1:
            raise UpstreamsError(f"{where}: the name {name!r} is used twice")
    _unique_urls(where, found)
    return found


def _entry(where: str, entry: object, environ: Mapping[str, str]) -> UpstreamConfig:
    if not isinstance(entry, dict):
        raise UpstreamsError(f"{where}: expected a table")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise UpstreamsError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UpstreamsError(
            f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-', got {name!r}"
        )
    where = f"{where} ({name})"
    kind = entry.get("kind", "ollama")
    if kind not in KINDS:
        raise UpstreamsError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    url = entry.get("url")
    if not isinstance(url, str):
        raise UpstreamsError(f"{where}: url is required (an http:// or https:// URL)")
    url = check_url(where, url, credentials=False)
    key_env = entry.get("key_env")
    key = None
    if key_env is not None:
        if not isinstance(key_env, str) or not _ENV_NAME.fullmatch(key_env):
            raise UpstreamsError(f"{where}: key_env must name an environment variable")
        key = environ.get(key_env) or None
        if key is None:
            raise UpstreamsError(f"{where}: the environment variable {key_env} is not set")
        if any(c in key for c in "\r\n\0"):
            raise UpstreamsError(f"{where}: {key_env} holds a line break or NUL")
    elif kind != "ollama":
        raise UpstreamsError(f"{where}: a {kind} upstream needs key_env (its API key)")
    models = entry.get("models")
    if models is not None:
        if (
            not isinstance(models, list)
            or not models
            or len(models) > MAX_PATTERNS
            or not all(isinstance(m, str) and m.strip() and len(m) <= 200 for m in models)
        ):
            raise UpstreamsError(
                f"{where}: models must be a list of 1 to {MAX_PATTERNS} model patterns"
            )
        models = tuple(m.strip() for m in models)
    elif kind != "ollama":
        raise UpstreamsError(f"{where}: a {kind} upstream needs models (the patterns it serves)")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1000:
        raise UpstreamsError(f"{where}: weight must be a number above 0, at most 1000")
    most = entry.get("max_concurrent")
    if most is not None and (
        isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 100_000
    ):
        raise UpstreamsError(f"{where}: max_concurrent must be a whole number from 1")
    is_open = entry.get("open", False)
    if not isinstance(is_open, bool):
        raise UpstreamsError(f"{where}: open must be true or false")
    if is_open and kind == "ollama":
        raise UpstreamsError(f"{where}: open is for cloud kinds (an Ollama is open to all keys)")
    return UpstreamConfig(
        name=name,
        url=url,
        kind=kind,
        key=key,
        key_env=key_env,
        models=models,
        weight=float(weight),
        max_concurrent=most,
        open=is_open,
        pass_headers=_pass_headers(where, kind, entry.get("pass_headers")),
    )


def _pass_headers(where: str, kind: Kind, raw: object) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if kind == "ollama":
        raise UpstreamsError(
            f"{where}: pass_headers is for cloud kinds (an Ollama gets every client header)"
        )
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_PASS_HEADERS
        or not all(isinstance(h, str) and _HEADER_NAME.fullmatch(h) for h in raw)
    ):
        raise UpstreamsError(
            f"{where}: pass_headers must be a list of at most {MAX_PASS_HEADERS} header names"
        )
    names = frozenset(h.lower() for h in raw)
    refused = names & _NEVER_PASSED
    if refused:
        raise UpstreamsError(f"{where}: pass_headers cannot pass {sorted(refused)[0]} on")
    return names


def check_url(where: str, raw: str, credentials: bool = True) -> str:
    """An http(s) URL without query or fragment; without user and password unless
    `credentials` (OLLAMA_BASE_URL always allowed them; a file names key_env instead)."""
    try:
        url = URL(raw)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise UpstreamsError(
            f"{where}: expected an http:// or https:// URL such as http://localhost:11434,"
            f" got {raw!r}"
        )
    if url.query_string or url.fragment:
        raise UpstreamsError(f"{where}: expected a URL without a query or fragment, got {raw!r}")
    if not credentials and (url.user or url.password):
        raise UpstreamsError(f"{where}: put the key in key_env, not in the URL")
    return raw.rstrip("/")


def _unique_urls(where: str, found: tuple[UpstreamConfig, ...]) -> None:
    urls = [u.url for u in found]
    for url in urls:
        if urls.count(url) > 1:
            raise UpstreamsError(f"{where}: the URL {url} is listed twice")
