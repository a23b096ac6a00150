"""Read a request body exactly as Ollama will: what the allow-list, the usage record and
the token reservation decide on is what Go's `encoding/json` hands Ollama.

Ollama decodes bodies into Go structs. Go matches an object key to a struct field
case-insensitively (fold.go `foldName`: ASCII letters upper-cased, any other rune r as
`unicode.ToUpper(unicode.ToLower(r))`, so the Kelvin sign folds to K, the long s to S, and
both Turkish I's to I), every matching key is decoded into the field and the last one
wins, `null` leaves a string or bool field as it was (a pointer it sets to nil), and a
value of the wrong type makes the whole decode fail, which Ollama answers with 400.
Maps (`options`) match their keys exactly. A dict from orjson loses the order of keys
that are spelled differently, so the fast path below is taken only when no key could
be another spelling of a field we read and no such field is `null`; every other body is
read again as ordered pairs. Bodies that cannot be decided (not a JSON object, invalid
JSON, data after the object) raise UndecidableBody. Invalid UTF-8 and lone surrogates
are no reason to refuse: Go reads each as U+FFFD, and so does this reader.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from .listspans import replaced, top_level_members

# Bodies bigger than this are read off the event loop (large embed batches).
FULL_PARSE_LIMIT = 1024 * 1024

# The only non-ASCII runes whose Go fold is an ASCII letter.
_NON_ASCII_FOLDS = {"\u212a": "K", "\u017f": "S", "\u0130": "I", "\u0131": "I"}

# Fields whose value the gateway uses, by how Go decodes them (Ollama's structs):
# strings (null: no change), optional bools (null: nil), and the output caps.
MODEL_FIELDS = ("model", "name", "source", "destination", "from")
_READ = (*MODEL_FIELDS, "stream", "stream_options", "options", "max_tokens", "max_output_tokens")
# Top-level keys most bodies have: no need to fold them to see they are none of ours.
_ORDINARY = frozenset(
    (
        *_READ,
        "messages",
        "prompt",
        "system",
        "template",
        "context",
        "images",
        "format",
        "tools",
        "think",
        "raw",
        "keep_alive",
        "input",
        "truncate",
        "dimensions",
        "suffix",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "insecure",
        "quantize",
        "files",
        "adapters",
        "parameters",
        "license",
        "tool_choice",
        "response_format",
        "instructions",
    )
)


class UndecidableBody(Exception):
    """The body cannot be read the way Ollama will read it; the message says why."""


class BodyFields(NamedTuple):
    """What Ollama will read from a request body. (A tuple: one is made per request,
    and a frozen dataclass costs several times as much to make.)"""

    models: tuple[str, ...] = ()  # every model it names, in the route's field order
    model: str | None = None  # the one Ollama uses (model, else the older name)
    stream: bool | None = None  # None: absent (each route has its default)
    include_usage: bool | None = None  # stream_options.include_usage (OpenAI)
    max_output: int | None = None  # the route's output cap (num_predict, max_tokens...)


def go_fold(key: str) -> str:
    """A key as Go's decoder compares it with a field name (fold.go foldName)."""
    if key.isascii():
        return key.upper()
    return "".join(_NON_ASCII_FOLDS.get(c, c) if c >= "\x80" else c.upper() for c in key)


_FOLDED = {go_fold(name): name for name in _READ}
_READ_SET = frozenset(_READ)


def read_body(body: bytes, fields: tuple[str, ...], cap_field: str = "num_predict") -> BodyFields:
    """What Ollama will read from `body` for a route whose model fields are `fields` and
    whose output cap is `cap_field` (routes.py: `options.num_predict` on Ollama's own routes,
    `max_tokens` or `max_output_tokens` on the compatible ones; no other is read)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses invalid UTF-8 and lone surrogates, which Go reads as U+FFFD:
        # read such a body as Go does (the ordered read, which fails on real errors).
        return _fields(_resolve(_ordered_pairs(body)), fields, cap_field)
    if not isinstance(doc, dict):
        raise UndecidableBody("the request body is not a JSON object")
    # The orjson dict is what Go would read unless a key could be another spelling of a
    # field we read, or one of those fields is null (which Go skips but a dict keeps).
    # (Set operations first: the usual body costs no loop over its keys.)
    plain = _ORDINARY.issuperset(doc) or not any(
        go_fold(key) in _FOLDED for key in doc if key not in _ORDINARY
    )
    if plain:
        for key in _READ_SET.intersection(doc):
            value = doc[key]
            if value is None or (
                key == "stream_options" and isinstance(value, dict) and _unusual(value)
            ):
                plain = False
                break
    return _fields(doc if plain else _resolve(_ordered_pairs(body)), fields, cap_field)


def _unusual(stream_options: dict[str, Any]) -> bool:
    """A stream_options object with anything but one plain include_usage (a folded
    spelling, or null) needs the ordered read."""
    return any(k != "include_usage" or v is None for k, v in stream_options.items())


def _ordered_pairs(body: bytes) -> list[tuple[str, Any]]:
    """The top-level object as (key, value) pairs in order, duplicates kept; nested
    objects as pair lists too."""

    def no_constants(name: str) -> Any:
        raise UndecidableBody(f"the request body is not valid JSON ({name})")

    try:
        text = body.decode("utf-8", _GO_REPLACE)
        pairs = json.loads(text, object_pairs_hook=_Pairs, parse_constant=no_constants)
    except ValueError:
        raise UndecidableBody("the request body is not valid JSON") from None
    if not isinstance(pairs, _Pairs):
        raise UndecidableBody("the request body is not a JSON object")
    return pairs


class _Pairs(list[tuple[str, Any]]):
    """An object's members in order, as the pairs hook hands them over; a lone
    surrogate (`\\ud800` unpaired) in a key or a string value made U+FFFD, as Go's
    decoder makes it."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(
            (_go_string(key), _go_string(value) if value.__class__ is str else value)
            for key, value in pairs
        )


def _go_string(text: str) -> str:
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def _replace_each_byte(error: UnicodeError) -> tuple[str, int]:
    """Go's decoder replaces invalid UTF-8 one byte at a time (utf8.DecodeRune returns
    RuneError, 1), where Python's "replace" takes a whole ill-formed sequence at once."""
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd", error.start + 1


_GO_REPLACE = "aigateway-go-replace"
codecs.register_error(_GO_REPLACE, _replace_each_byte)
# A surrogate left in a decoded string is a lone one: the decoder joins escaped pairs.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _resolve(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Go's decode of `pairs` into a struct with our fields: folded match, last wins,
    null skipped for strings (and bools), nested stream_options folded the same way,
    the options map merged with exact keys."""
    values: dict[str, Any] = {}
    for key, value in pairs:
        name = _FOLDED.get(go_fold(key))
        if name is None:
            continue
        if name == "options":
            if isinstance(value, _Pairs):
                merged = dict(values.get("options") or {})
                merged.update(value)  # a map: exact keys, the last wins
                values[name] = merged
            elif value is None:
                values.pop(name, None)
            else:
                raise UndecidableBody("options is not a JSON object")
        elif name == "stream_options":
            if isinstance(value, _Pairs):
                nested = _resolve_include_usage(value, values.get(name))
                values[name] = nested
            elif value is None:  # a pointer: null makes it nil
                values.pop(name, None)
            else:
                raise UndecidableBody("stream_options is not a JSON object")
        elif value is not None:
            values[name] = value
    return values


def _resolve_include_usage(pairs: Iterable[tuple[str, Any]], into: Any) -> dict[str, Any]:
    result = dict(into) if isinstance(into, dict) else {}
    for key, value in pairs:
        if go_fold(key) == "INCLUDE_USAGE" and value is not None:
            result["include_usage"] = value
    return result


def _fields(values: dict[str, Any], fields: tuple[str, ...], cap_field: str) -> BodyFields:
    # (Exact class checks: JSON decodes to exact str, bool and dict, and these run on
    # every request, where isinstance() costs a call each.)
    get = values.get
    models: list[str] = []
    for field in fields:
        value = get(field)
        if value.__class__ is str:
            if value:
                models.append(value)
        elif value is not None:
            # Go fails the whole decode: Ollama answers 400 and runs nothing.
            raise UndecidableBody(f"{field} is not a string")
    stream = get("stream")
    if stream.__class__ is not bool:
        stream = None
    include = None
    options = get("stream_options")
    if options.__class__ is dict:
        include = options.get("include_usage")
        if include.__class__ is not bool:
            include = None
    cap = None
    if cap_field == "num_predict":
        if "options" in values:  # (most bodies set no cap)
            options = get("options")
            if options.__class__ is dict:
                cap = _num_predict(options.get("num_predict"))
    elif cap_field in values:
        value = get(cap_field)
        if value.__class__ is int:  # (not bool, nor a float: Go refuses both for an int)
            cap = value
    return BodyFields(tuple(models), models[0] if models else None, stream, include, cap)


def _num_predict(value: Any) -> int | None:
    """options.num_predict as Ollama's FromMap reads it: a JSON number truncated to an
    int (5.9 is 5); one past an int64, which Go converts to anything, as no cap at all
    but the largest; anything else is no cap (Ollama refuses the request then)."""
    if value.__class__ is int:
        return value if -_INT64 <= value < _INT64 else UNDECIDED_CAP
    if value.__class__ is float:
        return int(value) if -_INT64 < value < _INT64 else UNDECIDED_CAP
    return None


_INT64 = 2**63
# A cap Go would read as some int64 nobody can tell: reserve the most.
UNDECIDED_CAP = 2**62


def first_text_field(doc: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The first of `fields` in `doc` that holds a non-empty string (model lists)."""
    for field in fields:
        value = doc.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def with_model(body: bytes, fields: tuple[str, ...], sent: str, model: str) -> bytes:
    """`body` with `model` in place of `sent` in every top-level member Go would read as
    one of `fields` (keys folded as Go folds them) that holds the string `sent`; every
    other byte as it was. (An alias's target: the upstream runs what the name stands
    for.) `model` is a canonical name (names.py: ASCII letters, digits and `_.:-/`),
    which JSON writes without an escape, as Go does."""
    text = body.decode("utf-8", "surrogateescape")  # (any byte goes back as it came)
    members = top_level_members(text)
    if members is None:  # (read_body read it as one object: cannot happen)
        raise UndecidableBody("the request body is not a JSON object")
    folded = {go_fold(field) for field in fields}
    hits = [m for m in members if m.value == sent and go_fold(m.key) in folded]
    return replaced(text, hits, model).encode("utf-8", "surrogateescape")


# The top-level fields fixed_sampling reads, as Go folds them: the options map on Ollama's
# own routes, temperature and seed on the OpenAI-compatible ones.
_SAMPLING_NATIVE = frozenset(("OPTIONS",))
_SAMPLING_OPENAI = frozenset(("TEMPERATURE", "SEED"))


def fixed_sampling(body: bytes, native: bool) -> bool:
    """Whether the request itself fixes how Ollama samples its answer: temperature 0 and
    a seed, in `options` on Ollama's own routes (a map: exact keys, merged across repeated
    `options` members, the last value winning), top-level on the OpenAI-compatible ones
    (Go's folded keys, the last winning, `null` unsetting). What a model's own parameters
    set cannot be seen here, so it does not count. (The response cache repeats only such
    answers of the generation routes.)

    Read with orjson when its dict is what Go reads (no other spelling of a field read;
    on Ollama's routes, one `options` member, or orjson's last one fixing it already,
    which the members before it cannot undo): the ordered read costs several times as much,
    and this runs on the event loop for every generation the cache could answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if doc.__class__ is dict:
        read = _SAMPLING_NATIVE if native else _SAMPLING_OPENAI
        if all(key in _ORDINARY or go_fold(key) not in read for key in doc):
            if not native:
                return _fixed(doc.get("temperature"), doc.get("seed"))
            options = doc.get("options")
            if options.__class__ is dict and _fixed(
                options.get("temperature"), options.get("seed")
            ):
                return True
            if body.count(b'"options"') < 2:  # (else members Go merges may fix it)
                return False
    return _fixed_in_order(body, native)


def _fixed_in_order(body: bytes, native: bool) -> bool:
    """fixed_sampling by the ordered read, as Go decodes each member in turn."""
    try:
        pairs = _ordered_pairs(body)
    except UndecidableBody:
        return False
    temperature: Any = None
    seed: Any = None
    if native:
        options_map: dict[str, Any] = {}
        for key, value in pairs:
            if go_fold(key) == "OPTIONS":
                if isinstance(value, _Pairs):
                    options_map.update(value)
                elif value is None:
                    options_map = {}
        temperature, seed = options_map.get("temperature"), options_map.get("seed")
    else:
        for key, value in pairs:
            folded = go_fold(key)
            if folded == "TEMPERATURE":
                temperature = value
            elif folded == "SEED":
                seed = value
    return _fixed(temperature, seed)


def _fixed(temperature: Any, seed: Any) -> bool:
    numbers = (int, float)  # (exact classes: a bool is no number to Go)
    return temperature.__class__ in numbers and temperature == 0 and seed.__class__ in numbers
