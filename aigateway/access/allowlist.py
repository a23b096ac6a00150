"""Per-key model allow-lists: which model a request names, whether a key may use it,
and model lists (tags, ps, /v1/models) cut down to what the key may see."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from ..errors import ModelNotAllowed, Refused
from ..protocol.body import first_text_field
from ..protocol.listspans import Array, Entry, cut, top_level_arrays
from ..protocol.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    GO_SPACE,
    InvalidModelName,
    ModelRef,
    canonical,
)


def is_cloud(name: str) -> bool:
    """Ollama's cloud models (`gpt-oss:120b-cloud`, `glm-4.6:cloud`) run on ollama.com
    under the GPU owner's account. Compared without case, and without a digest, so that
    no spelling Ollama would resolve to one slips by."""
    lowered = name.lower()
    if "cloud" not in lowered:  # nearly every name: no need to take it apart
        return False
    return lowered.strip().split("@", 1)[0].endswith(("-cloud", ":cloud"))


def model_allowed(model: str, patterns: Iterable[str]) -> bool:
    """Shell-style patterns (`llama3*`, `qwen2.5:0.5b`) matched against the model's one
    identity (protocol/names.py: any spelling Ollama runs as the same model matches
    alike), and the patterns read the same way (case, the default registry host and
    namespace); `llama3` and `llama3:latest` are the same model. A cloud model is
    matched only by a pattern that itself names the cloud tag (`*-cloud`,
    `gpt-oss:120b-cloud`), never by `*` or `gpt-oss*`."""
    if is_cloud(model):
        patterns = [p for p in patterns if is_cloud(pattern_form(p))]
    return matches(model, patterns)


def matches(model: str, patterns: Iterable[str]) -> bool:
    """Whether any of `patterns` names `model`, both read as identities (no cloud rule:
    prices use this, so that a `*` price covers cloud models too)."""
    model = identity(model)
    names = [model]
    if model.endswith(":latest"):
        names.append(model.removesuffix(":latest"))
    return any(fnmatchcase(name, pattern_form(p)) for name in names for p in patterns)


def uncovered(patterns: Iterable[str], by: Iterable[str]) -> list[str]:
    """Those of `patterns` (a new allow-list) that could allow a model `by` (its maker's)
    does not: what makes an allow-list wider. Decided by the matching rules above, and
    on the safe side where patterns meet patterns:

    - a name (no `*`, `?` or `[`) is covered when `by` allows that model (model_allowed:
      its one identity, and a cloud model only by a cloud pattern);
    - a pattern is covered by the same pattern (as written in pattern_form), or by a
      pattern that is a literal text and one final `*` (`llama3*`, `*`) when the
      pattern's own literal start begins with that text (`llama3.1*`, `llama3:8b-q?`):
      every name it matches then begins so. A cloud pattern (`*-cloud`) needs a cloud
      pattern to cover it, as `*` never allows a cloud model.

    Anything else (`*:8b` under `llama*`, say) is refused though it may be narrower:
    proving one pattern inside another in general is not worth the risk of a mistake."""
    covering = [pattern_form(p) for p in by]
    return [p for p in patterns if not _covered(p, covering)]


def _covered(pattern: str, covering: list[str]) -> bool:
    form = pattern_form(pattern)
    if not any(c in form for c in "*?["):
        return model_allowed(form, covering)
    cloud = is_cloud(form)
    for wider in covering:
        if cloud and not is_cloud(wider):
            continue
        if form == wider:
            return True
        stem = wider[:-1]
        if wider.endswith("*") and not any(c in stem for c in "*?["):
            first_wildcard = min(i for i, c in enumerate(form) if c in "*?[")
            if form[:first_wildcard].startswith(stem):
                return True
    return False


def identity(name: str) -> str:
    """A model's canonical name (protocol/names.py); a name Ollama would refuse (one an
    upstream lists, say) is only lower-cased, so that it matches nothing it should not."""
    try:
        return canonical(name)
    except InvalidModelName:
        return name.strip(GO_SPACE).lower()


_PATTERN_FORMS: dict[str, str] = {}
_DEFAULT_PREFIXES = (
    f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/",
    f"{DEFAULT_HOST}/",
    f"{DEFAULT_NAMESPACE}/",
)


def pattern_form(pattern: str) -> str:
    """A pattern as the canonical names it is matched against are written: lower case,
    without a scheme or the default host and namespace (`Registry.Ollama.AI/library/
    Llama3*` is `llama3*`). A pattern without wildcards is a name, resolved as one."""
    form = _PATTERN_FORMS.get(pattern)
    if form is not None:
        return form
    form = pattern.strip(GO_SPACE).lower()
    if not any(c in form for c in "*?["):
        form = identity(form)
    else:
        scheme, sep, rest = form.partition("://")
        if sep and "/" not in scheme:
            form = rest
        for prefix in _DEFAULT_PREFIXES:
            if form.startswith(prefix):
                form = form.removeprefix(prefix)
                break
    if len(_PATTERN_FORMS) >= 4096:  # (patterns come from admins, but keep it bounded)
        _PATTERN_FORMS.clear()
    _PATTERN_FORMS[pattern] = form
    return form


def check_cloud(models: Iterable[ModelRef]) -> None:
    """Refuse cloud models (when ALLOW_CLOUD_MODELS is off)."""
    for model in models:
        if model.cloud:
            raise ModelNotAllowed(
                f"the model {model.sent!r} is an Ollama cloud model, which would run on"
                " ollama.com under the gateway owner's account; this gateway does not relay"
                " them (ALLOW_CLOUD_MODELS)",
                reason=Refused.CLOUD_MODEL,
            )


def require_allowed(
    models: tuple[ModelRef, ...], fields: tuple[str, ...], patterns: tuple[str, ...]
) -> None:
    """Every model a body names must be allowed (by its one identity), and it must name
    one; else 403 (naming the model as the request spelled it)."""
    if not models:
        raise ModelNotAllowed(
            f"this key may only use the models {', '.join(patterns)}; the request"
            f" names none (field {fields[0]!r})",
            reason=Refused.MODEL_NOT_ALLOWED,
        )
    for model in models:
        if not model_allowed(model.canonical, patterns):
            raise ModelNotAllowed(
                f"this key may not use the model {model.sent!r} (allowed: {', '.join(patterns)})",
                reason=Refused.MODEL_NOT_ALLOWED,
            )


def filter_model_list(body: bytes, patterns: tuple[str, ...] | None, cloud: bool) -> bytes:
    """A model list cut down to the models the key may use (its allow-list, if any, and
    cloud models only when `cloud`): Ollama's `{"models": [...]}` (tags, ps, entries named
    by `name`/`model`) or OpenAI's `{"data": [...]}` (/v1/models, entries named by `id`).
    Every top-level array under such a key is cut (a key repeated, or spelled in another
    case as Go's decoder would read it: each), and an entry that is not an object goes.

    The answer is Ollama's bytes: `body` itself when nothing goes, else `body` with the
    refused entries cut out of its text (listspans.py). Anything that is not a JSON
    object is returned as it is."""
    found = model_list_arrays(body)
    if found is None:
        return body
    text, arrays = found

    def usable(name: str) -> bool:
        if not cloud and is_cloud(name):
            return False
        return patterns is None or model_allowed(name, patterns)

    def keep(array: Array, entry: Entry) -> bool:
        if entry.pairs is None or not isinstance(entry.value, dict):
            return False
        names = ENTRY_NAMES[array.key.casefold()]
        return usable(first_text_field(entry.value, names) or "") and all(
            usable(name) for name in _other_readings(entry.pairs, names)
        )

    kept = cut(text, arrays, keep)
    return body if kept is None else kept.encode("utf-8")


def model_list_arrays(body: bytes) -> tuple[str, list[Array]] | None:
    """A model list's text and its arrays of entries (Ollama's `models`, OpenAI's
    `data`); None for anything else, which callers pass on as it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    arrays = top_level_arrays(text, _LIST_KEYS)
    return (text, arrays) if arrays else None


# A model list's field, and what its entries are named by: Ollama's {"models": [{"name"|
# "model": ...}]}, OpenAI's and Anthropic's {"data": [{"id": ...}]}.
ENTRY_NAMES = {"models": ("name", "model"), "data": ("id",)}
_LIST_KEYS = frozenset(ENTRY_NAMES)


def _other_readings(pairs: list[tuple[str, object]], names: tuple[str, ...]) -> list[str]:
    """The names an entry may be read as besides first_text_field's: when a name field is
    repeated, or spelled in another case (Go's decoder matches field names without case
    and keeps the last; other readers keep the first), every one of them, so that no
    reader sees a model the key may not."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) == len(keys) and not any(
        key not in names and key.casefold() in names for key in keys
    ):
        return []  # (nearly always)
    return [v for k, v in pairs if k.casefold() in names and isinstance(v, str) and v]
