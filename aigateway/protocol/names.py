"""One identity per model: the model a request names, resolved exactly as Ollama resolves it.

Read from ollama/ollama at fb30760996871fa9460115c753afd2c60d4ab0f7 (2026-08-21):

- The inference routes (generate, chat, embed, embeddings; /v1 and /v1/messages, which
  Ollama's middleware turns into chat, generate and embed requests with the model as
  sent), show and create's `from` start with `server/model_resolver.go:
  parseAndValidateModelRef` = `internal/modelref.ParseRef` then `model.ParseName(base)`
  and `IsValid()`. Pull and delete do the same after renaming a cloud ref to the stub
  it pulls (`modelref.NormalizePullName`: `gpt-oss:20b:cloud` -> `gpt-oss:20b-cloud`).
- `ParseRef` applies `strings.TrimSpace` (Go's `unicode.IsSpace`, not Python's
  `str.isspace`), refuses an empty name (`model is required`), and strips ONE source
  suffix after the last `:`, itself trimmed and lower-cased: `:cloud` and `:local`, or a
  tag ending `-cloud` (the older spelling) unless a `/` follows the colon. A second suffix
  under the first is refused: `use either :local or :cloud, not both: "<name>"` (Go %q).
- A cloud ref is proxied to ollama.com with the model field set to the base
  (`gpt-oss:20b:cloud` and `gpt-oss:20b-cloud` both send `gpt-oss:20b`). `:local`
  runs the local model of the base name (404 if that is a cloud stub).
- `types/model/name.go: ParseNameBare` splits the tag at the last `:` (only if after the
  last `/`), then model, namespace and host at the last `/`s; anything up to a `://` in
  the host is a scheme, dropped from the identity and never checked. An empty part after
  a separator becomes `!MISSING!` (invalid). `ParseName` fills in `registry.ollama.ai`,
  `library`, `latest`. There is no digest any more: `@` is invalid in every part.
- `IsValid`: host `[A-Za-z0-9_][A-Za-z0-9_.:-]*` of 1-350 bytes, namespace
  `[A-Za-z0-9_][A-Za-z0-9_-]*`, model and tag `[A-Za-z0-9_][A-Za-z0-9_.-]*`, 1-80 bytes
  each. Any non-ASCII rune is invalid, so ASCII case is the only case there is.
- An existing model is found by `getExistingName`, each part compared with
  `strings.EqualFold` against the manifests on disk: a name is case-insensitive (except
  on /api/embeddings, which skips that step and so matches only the stored case on a
  case-sensitive file system).

Create (its `model`), copy and push call `model.ParseName` directly: no trimming, no
source suffix (`foo:local` there is a model tagged `local`): `resolve_literal` reads names
that way.

The canonical form: lower case, the default host and namespace left out, the tag always
written (`llama3.2:latest`, `myns/foo:7b`, `example.com/ns/m:tag`). A cloud model keeps the
spelling Ollama pulls and lists it by: `<base>:<tag>-cloud`, or `<base>:cloud` when the
tag is `latest` (`gpt-oss:20b-cloud`, `glm-4.6:cloud`; NormalizePullName alone would pull
`glm-4.6:latest:cloud` as `glm-4.6:latest-cloud`, though it runs as `glm-4.6:cloud`). No
local model ends that way (ParseRef would call it cloud), so a cloud model never equals a
local one, and resolving a canonical name gives it back.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"
_MISSING: Final = "!MISSING!"  # name.go MissingPart: invalid as any part

# Go's unicode.IsSpace, which strings.TrimSpace uses: the Latin-1 six plus NEL and NBSP,
# then Unicode's White_Space property. Python's str.strip() would also strip U+001C-U+001F.
GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# name.go isValidPart/isValidLen, by part (host, namespace, model, tag). [A-Za-z0-9_]
# and not \w, which would take non-ASCII letters; fullmatch, as $ allows a final newline.
_PART = (
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
)

Reason = Literal["required", "conflict", "invalid"]
Source = Literal["", "local", "cloud"]


class ModelRef(NamedTuple):
    sent: str  # the name exactly as the request sent it
    canonical: str  # one string per model Ollama would run (see the module docstring)
    cloud: bool  # an Ollama cloud model: proxied to ollama.com
    # The alias `sent` matched (its identity), "" when none: `canonical` and `cloud` are
    # then the target's (access/aliases.py), and the body is sent naming the target.
    alias: str = ""


class InvalidModelName(ValueError):
    """A name Ollama refuses, with Ollama's own message. `reason` tells which refusal, as
    the routes word two of them differently:

    - "required" (empty after trimming): chat, /api/embeddings, show and delete answer
      400 `model is required` (the message here); generate and embed answer 404
      `model '<sent>' not found`; pull answers 400 `invalid model name`.
    - "conflict": 400 `use either :local or :cloud, not both: "<trimmed name>"` on every
      route that parses a ref.
    - "invalid": 400 `invalid model name` (the message here); delete answers 400
      `name "<sent>" is invalid`, copy `source "<sent>" is invalid` (or destination).
    """

    status: Final = 400

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def go_quote(s: str) -> str:
    """Go's %q (strconv.Quote): printable runes as they are, the rest escaped."""
    out = ['"']
    for char in s:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= code <= 0xDFFF:  # cannot be in a Go string: JSON made it U+FFFD
            out.append("\ufffd")
        elif char.isprintable():  # Go's IsPrint: L, M, N, P, S and the ASCII space
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES: Final = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
}  # fmt: skip


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _source_suffix(raw: str) -> tuple[str, Source]:
    """modelref.parseSourceSuffix: the name without its source suffix, and the source
    ("" when there is none)."""
    idx = raw.rfind(":")
    if idx < 0:
        return raw, ""
    suffix_raw = raw[idx + 1 :].strip(GO_SPACE)
    # Go lower-cases with unicode.ToLower; no non-ASCII rune lowers to any letter of
    # "cloud" or "local" (only U+0130 to i and U+212A to k reach ASCII), so ASCII is exact.
    suffix = suffix_raw.translate(_ASCII_LOWER)
    if suffix == "cloud":
        return raw[:idx], "cloud"
    if suffix == "local":
        return raw[:idx], "local"
    if "/" not in suffix_raw and suffix.endswith("-cloud"):
        return raw[: idx + 1] + suffix_raw[: -len("-cloud")], "cloud"
    return raw, ""


def _parse_ref(sent: str) -> tuple[str, Source]:
    """modelref.ParseRef: (base, source), or InvalidModelName."""
    raw = sent.strip(GO_SPACE)
    if not raw:
        raise InvalidModelName("model is required", "required")
    base, source = _source_suffix(raw)
    if source and _source_suffix(base)[1]:
        raise InvalidModelName(
            f"use either :local or :cloud, not both: {go_quote(raw)}", "conflict"
        )
    return base, source


def _bare(s: str) -> tuple[str, str, str, str]:
    """name.go ParseNameBare: (host, namespace, model, tag), "" where not given."""
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        i = s.rfind(":")
        s, tag = s[:i] or _MISSING, s[i + 1 :] or _MISSING
    i = s.rfind("/")
    if i < 0:
        return host, namespace, s, tag
    s, model = s[:i] or _MISSING, s[i + 1 :] or _MISSING
    i = s.rfind("/")
    if i < 0:
        return host, s, model, tag
    s, namespace = s[:i] or _MISSING, s[i + 1 :] or _MISSING
    scheme, sep, host = s.partition("://")
    return (host if sep else scheme), namespace, model, tag


def _valid(parts: tuple[str, str, str, str]) -> bool:
    """name.go IsValid (IsFullyQualified): every part present and well formed."""
    return all(pattern.fullmatch(part) for pattern, part in zip(_PART, parts, strict=True))


def _parse_name(s: str) -> tuple[str, str, str, str]:
    """name.go ParseName: the bare parts with the defaults filled in, lower-cased when
    valid (Ollama compares them with EqualFold, and a valid part is ASCII); else raises."""
    host, namespace, model, tag = _bare(s)
    parts = (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    if not _valid(parts):
        raise InvalidModelName("invalid model name", "invalid")
    return (parts[0].lower(), parts[1].lower(), parts[2].lower(), parts[3].lower())


def _display(parts: tuple[str, str, str, str], cloud: bool) -> str:
    """name.go DisplayShortest of lower-cased parts; a cloud model as Ollama pulls it."""
    host, namespace, model, tag = parts
    if host != DEFAULT_HOST:
        prefix = f"{host}/{namespace}/{model}"
    elif namespace != DEFAULT_NAMESPACE:
        prefix = f"{namespace}/{model}"
    else:
        prefix = model
    if not cloud:
        return f"{prefix}:{tag}"
    return f"{prefix}:cloud" if tag == DEFAULT_TAG else f"{prefix}:{tag}-cloud"


def _resolve(name: str) -> ModelRef:
    base, source = _parse_ref(name)
    cloud = source == "cloud"
    return ModelRef(name, _display(_parse_name(base), cloud), cloud)


CACHE_SIZE: Final = 4096
# Names come from clients: the cache is emptied when full, as PriceList.for_model does.
# Only resolved names are kept; a refused one is parsed again (and raised afresh).
_cache: dict[str, ModelRef] = {}


def resolve(name: str) -> ModelRef:
    """The model a request's model field names, as the inference routes, show, pull and
    delete resolve it; raises InvalidModelName where Ollama answers with an error.
    (Aliases apply after this, per caller: access/resolver.py.)"""
    ref = _cache.get(name)
    if ref is None:
        ref = _resolve(name)
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[name] = ref
    return ref


def canonical(name: str) -> str:
    """The canonical name of a model an upstream lists (its /api/tags, /api/ps names),
    equal to `resolve(name).canonical` for every name."""
    return resolve(name).canonical


def resolve_literal(name: str) -> ModelRef:
    """A name as create (`model`/`name`), copy and push read it: `model.ParseName` alone,
    so no trimming and no source suffix (`foo:local` is a model tagged `local`). A cloud
    stub is known by its tag (`cloud`, `<tag>-cloud`), as Ollama pulls them. Not cached:
    only model management uses it."""
    parts = _parse_name(name)
    tag = parts[3]
    return ModelRef(name, _display(parts, False), tag == "cloud" or tag.endswith("-cloud"))
