"""Where each entry of a JSON object's top-level arrays lies in its text, so that a list
cut down (model lists: tags, ps, /v1/models) goes out in the upstream's own bytes: the
kept entries and the separators between them as Ollama wrote them, never re-serialised
(Go escapes `<` as `\\u003c`, may indent, and so on).

The walk is strict JSON (RFC 8259: no NaN, no trailing text) and reads each value once,
with the standard library's C scanner; a text it cannot read is None, and the caller
passes it on unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, and only it


@dataclass(frozen=True, slots=True)
class Entry:
    start: int  # the entry is text[start:end]
    end: int
    value: object  # as decoded (a repeated key: its last value, as Go and most readers)
    # An object's members in their order, repeats included (None for any other value).
    pairs: list[tuple[str, object]] | None


@dataclass(slots=True)
class Array:
    key: str  # as decoded
    open: int  # text[open] is '['
    close: int  # text[close] is ']'
    entries: list[Entry] = field(default_factory=list)


def _skip(text: str, i: int) -> int:
    """Past the whitespace at `i`."""
    space = _SPACE.match(text, i)
    return space.end() if space else i


def _refuse(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def _key(text: str, i: int, value_at: Callable[[str, int], tuple[Any, int]]) -> tuple[str, int]:
    """The member key at `i`, and where its value starts; ValueError when none is there."""
    if text[i] != '"':
        raise ValueError("a key was expected")
    key, i = value_at(text, i)
    i = _skip(text, i)
    if text[i] != ":":
        raise ValueError("a colon was expected")
    return key, _skip(text, i + 1)


def top_level_arrays(text: str, keys: frozenset[str]) -> list[Array] | None:
    """Every member of the top-level object whose key, case-folded, is in `keys` (Go's
    decoder matches field names without case) and whose value is an array, in text order
    (a key spelled twice: both). None when `text` is not one JSON object."""
    try:
        return _walk(text, keys)
    except (ValueError, IndexError, RecursionError):  # (JSONDecodeError is a ValueError)
        return None


def _walk(text: str, keys: frozenset[str]) -> list[Array] | None:
    last: list[list[tuple[str, object]] | None] = [None]

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        last[0] = pairs  # inner objects first: the entry itself is the last one seen
        return dict(pairs)

    entry_at = json.JSONDecoder(object_pairs_hook=pairs_hook, parse_constant=_refuse).raw_decode
    value_at = json.JSONDecoder(parse_constant=_refuse).raw_decode
    found: list[Array] = []
    i = _skip(text, 0)
    if text[i] != "{":
        return None
    i = _skip(text, i + 1)
    more = text[i] != "}"
    if not more:
        i += 1
    while more:
        key, i = _key(text, i, value_at)
        if text[i] == "[" and key.casefold() in keys:
            array = Array(key, i, i)
            i = _skip(text, i + 1)
            while text[i] != "]":
                last[0] = None
                value, end = entry_at(text, i)
                array.entries.append(
                    Entry(i, end, value, last[0] if isinstance(value, dict) else None)
                )
                i = _skip(text, end)
                if text[i] == ",":
                    i = _skip(text, i + 1)
                    if text[i] == "]":  # a trailing comma
                        return None
                elif text[i] != "]":
                    return None
            array.close = i
            found.append(array)
            i += 1
        else:
            _, i = value_at(text, i)
        i = _skip(text, i)
        if text[i] == ",":
            i = _skip(text, i + 1)
        elif text[i] == "}":
            i += 1
            more = False
        else:
            return None
    if _skip(text, i) != len(text):
        return None
    return found


def cut(text: str, arrays: list[Array], keep: Callable[[Array, Entry], bool]) -> str | None:
    """`text` with the entries `keep` refuses cut out of their arrays, or None when it
    keeps them all. Each kept entry keeps the separator that came before it (the first
    kept one, the array's opening space) and the array its closing space; an array left
    empty is `[]`, as Go writes one."""
    pieces: list[str] = []
    at = 0
    for array in arrays:
        entries = array.entries
        kept = [keep(array, entry) for entry in entries]
        if all(kept):
            continue
        pieces.append(text[at : array.open + 1])
        if any(kept):
            pieces.append(text[array.open + 1 : entries[0].start])
            first = True
            for n, entry in enumerate(entries):
                if kept[n]:
                    if not first:  # the separator before it, comma and space
                        pieces.append(text[entries[n - 1].end : entry.start])
                    pieces.append(text[entry.start : entry.end])
                    first = False
            pieces.append(text[entries[-1].end : array.close])
        at = array.close
    if not pieces:
        return None
    pieces.append(text[at:])
    return "".join(pieces)


@dataclass(frozen=True, slots=True)
class Member:
    key: str  # as decoded
    start: int  # the value is text[start:end]
    end: int
    value: object  # as decoded


_VALUE_AT = json.JSONDecoder(parse_constant=_refuse).raw_decode  # (made once: it costs)


def top_level_members(text: str) -> list[Member] | None:
    """Every member of the JSON object `text`, in text order (a key spelled twice: both);
    None when `text` is not one JSON object."""
    value_at = _VALUE_AT
    found: list[Member] = []
    try:
        i = _skip(text, 0)
        if text[i] != "{":
            return None
        i = _skip(text, i + 1)
        if text[i] == "}":
            return found if _skip(text, i + 1) == len(text) else None
        while True:
            key, start = _key(text, i, value_at)
            value, end = value_at(text, start)
            found.append(Member(key, start, end, value))
            i = _skip(text, end)
            if text[i] == "}":
                return found if _skip(text, i + 1) == len(text) else None
            if text[i] != ",":
                return None
            i = _skip(text, i + 1)
    except (ValueError, IndexError, RecursionError):
        return None


def replaced(text: str, members: list[Member], value: str) -> str:
    """`text` with each of `members` (from top_level_members) holding `value` instead,
    written as the JSON string `value` (which must need no escape: see its callers)."""
    pieces: list[str] = []
    at = 0
    for member in members:
        pieces.append(text[at : member.start])
        pieces.append(f'"{value}"')
        at = member.end
    pieces.append(text[at:])
    return "".join(pieces)
