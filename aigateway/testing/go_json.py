"""How Go's encoding/json decodes a body into one of Ollama's request structs, for the
fake Ollama: written apart from the gateway's reader (aigateway/protocol/body.py) so that tests
check the gateway against it rather than against itself. Slow and plain on purpose.

Go (decode.go `object`, fold.go `foldName`, Go 1.21 and later): an object key goes to the
struct field whose name equals it exactly, else whose fold equals its fold, where a rune
folds to `unicode.ToUpper(unicode.ToLower(r))`; each occurrence is decoded in turn, so
the last wins; `null` leaves a string or bool as it was and sets a pointer or map to nil;
a nested struct field is decoded into the value already there; a map field keeps its
entries and adds the new ones (map keys are exact); a value of the wrong type fails the
decode (Ollama answers 400).
"""

from __future__ import annotations

import json
from typing import Any

# Ollama's request fields the fake looks at, with their Go kinds.
STRUCT_FIELDS = {
    "model": "string",
    "name": "string",
    "source": "string",
    "destination": "string",
    "from": "string",
    "stream": "bool",  # *bool in api/types.go and bool in openai.go: both take true/false
    "stream_options": "struct",
    "options": "map",
}
NESTED_FIELDS = {"include_usage": "bool"}


class GoDecodeError(ValueError):
    """What Go's Decode would return: Ollama answers 400 and runs nothing."""


def simple_lower(c: str) -> str:
    """unicode.ToLower: Unicode's simple lowercase mapping. Python applies the full one,
    which differs for U+0130 alone among letters (full 'i̇', simple 'i')."""
    if c == "\u0130":
        return "i"
    lowered = c.lower()
    return lowered if len(lowered) == 1 else c


def simple_upper(c: str) -> str:
    uppered = c.upper()
    return uppered if len(uppered) == 1 else c


def fold(name: str) -> str:
    return "".join(c.upper() if c.isascii() else simple_upper(simple_lower(c)) for c in name)


def _go_text(text: str) -> str:
    """A decoded string as Go keeps it: a lone surrogate escape becomes U+FFFD."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(_go_text(k), _go_text(v) if isinstance(v, str) else v) for k, v in pairs]


def _utf8_as_go(body: bytes) -> str:
    """Bytes as Go's decoder reads them: each byte of invalid UTF-8 one U+FFFD
    (utf8.DecodeRune returns RuneError with size 1), decoded one rune at a time."""
    out, i = [], 0
    while i < len(body):
        for size in (1, 2, 3, 4):
            try:
                out.append(body[i : i + size].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += size
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def decode(body: bytes) -> dict[str, Any]:
    """The struct fields above as Go fills them from `body` (absent fields left out)."""
    try:
        text = _utf8_as_go(body)
        value = json.JSONDecoder(object_pairs_hook=_pairs).raw_decode(text.lstrip())[0]
    except ValueError as exc:
        raise GoDecodeError(str(exc)) from None
    if not isinstance(value, list):
        raise GoDecodeError("cannot unmarshal into a struct")
    return _decode_struct(value, STRUCT_FIELDS, {})


def _field(key: str, fields: dict[str, str]) -> str | None:
    if key in fields:
        return key
    for name in fields:
        if fold(name) == fold(key):
            return name
    return None


def _decode_struct(
    pairs: list[tuple[str, Any]], fields: dict[str, str], into: dict[str, Any]
) -> dict[str, Any]:
    result = dict(into)
    for key, value in pairs:
        name = _field(key, fields)
        if name is None:
            continue
        kind = fields[name]
        if value is None:
            if kind in ("struct", "map"):
                result.pop(name, None)  # a pointer or map set to nil
            continue
        if kind == "string":
            if not isinstance(value, str):
                raise GoDecodeError(f"cannot unmarshal into field {name} of type string")
            result[name] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise GoDecodeError(f"cannot unmarshal into field {name} of type bool")
            result[name] = value
        elif kind == "struct":
            if not isinstance(value, list):
                raise GoDecodeError(f"cannot unmarshal into field {name} of type struct")
            result[name] = _decode_struct(value, NESTED_FIELDS, result.get(name, {}))
        else:  # map
            if not isinstance(value, list):
                raise GoDecodeError(f"cannot unmarshal into field {name} of type map")
            merged = dict(result.get(name, {}))
            for map_key, map_value in value:
                merged[map_key] = map_value
            result[name] = merged
    return result
