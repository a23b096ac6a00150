"""The aliases in force, in memory: which model a name runs for a caller.

Loaded with the keys (keytable.py), so an alias set by a CLI, the admin API or another
gateway works within a second. A lookup is at most three dict gets, made only when an
alias exists: with none, a request pays one attribute read.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.body import first_text_field
from ..protocol.listspans import Array, replaced, top_level_members
from ..protocol.names import InvalidModelName, ModelRef, resolve
from ..records import Alias, KeyRecord
from .allowlist import ENTRY_NAMES, identity, model_list_arrays


class AliasTable:
    """Aliases by owner; the narrowest wins: the key's, then its user's, then a global."""

    __slots__ = ("_by_key", "_by_user", "_global", "aliases", "empty")

    def __init__(self, aliases: Iterable[Alias] = ()) -> None:
        self.aliases = tuple(aliases)
        self.empty = not self.aliases
        self._global: dict[str, tuple[Alias, ModelRef]] = {}
        self._by_user: dict[tuple[str, str], tuple[Alias, ModelRef]] = {}
        self._by_key: dict[tuple[int, str], tuple[Alias, ModelRef]] = {}
        for alias in self.aliases:
            try:
                entry = (alias, resolve(alias.target))
            except InvalidModelName:  # (a row edited by hand: stored ones resolve)
                continue
            if alias.scope == "key":
                self._by_key[(int(alias.owner), alias.canonical)] = entry
            elif alias.scope == "user":
                self._by_user[(alias.owner, alias.canonical)] = entry
            else:
                self._global[alias.canonical] = entry

    def _find(self, canonical: str, caller: KeyRecord) -> tuple[Alias, ModelRef] | None:
        return (
            self._by_key.get((caller.id, canonical))
            or self._by_user.get((caller.user, canonical))
            or self._global.get(canonical)
        )

    def apply(self, ref: ModelRef, caller: KeyRecord) -> ModelRef:
        """`ref` as `caller` runs it: the target's identity when its name is an alias."""
        found = self._find(ref.canonical, caller)
        if found is None:
            return ref
        target = found[1]
        return ModelRef(ref.sent, target.canonical, target.cloud, ref.canonical)

    def for_caller(self, caller: KeyRecord) -> list[Alias]:
        """The aliases `caller`'s requests resolve, one per name (the narrowest)."""
        seen: dict[str, Alias] = {}
        for alias in self.aliases:
            found = self._find(alias.canonical, caller)
            if found is not None and found[0] is alias:
                seen[alias.canonical] = alias
        return sorted(seen.values(), key=lambda a: a.canonical)


def with_aliases(body: bytes, aliases: list[Alias]) -> bytes:
    """A model list (tags, /v1/models) with an entry for each of `aliases` whose target
    it lists: a copy of the target's entry, named by the alias as the admin wrote it,
    right after it; an entry the alias's name hides (a model of that name) goes. The
    rest is the upstream's bytes; `body` itself when no alias applies. (An alias name is
    ASCII letters, digits and `_.:-/`: Go's encoding/json writes it as it is.)"""
    if not aliases:
        return body
    found = model_list_arrays(body)
    if found is None:
        return body
    text, arrays = found
    by_target: dict[str, list[Alias]] = {}
    for alias in aliases:
        by_target.setdefault(alias.target, []).append(alias)
    hidden = {alias.canonical for alias in aliases}
    pieces: list[str] = []
    at = 0
    for array in arrays:
        items = _with_aliases(text, array, by_target, hidden)
        if items is None:
            continue
        entries = array.entries
        sep = text[entries[0].end : entries[1].start] if len(entries) > 1 else ","
        pieces.append(text[at : array.open + 1])
        if items:
            pieces.append(text[array.open + 1 : entries[0].start])
            pieces.append(sep.join(items))
            pieces.append(text[entries[-1].end : array.close])
        at = array.close
    if not pieces:
        return body
    pieces.append(text[at:])
    return "".join(pieces).encode("utf-8")


def _with_aliases(
    text: str, array: Array, by_target: dict[str, list[Alias]], hidden: set[str]
) -> list[str] | None:
    """The entries of `array` as text, with the aliases' entries; None: no change."""
    names = ENTRY_NAMES[array.key.casefold()]
    items: list[str] = []
    changed = False
    for entry in array.entries:
        own = text[entry.start : entry.end]
        name = first_text_field(entry.value, names) if isinstance(entry.value, dict) else None
        known = identity(name) if name else ""
        if known in hidden:
            changed = True
            continue
        items.append(own)
        for alias in by_target.get(known, ()):
            members = top_level_members(own) or []
            named = [m for m in members if m.key.casefold() in names and isinstance(m.value, str)]
            items.append(replaced(own, named, alias.name))
            changed = True
    return items if changed else None
