"""Every admin action, once, for the admin HTTP API (and so the dashboard, which calls
it) and both CLIs: create, change, revoke and purge keys; create and change users;
set and remove prices; set and remove model aliases.

Each action is one transaction in the store: its input is checked whole before anything
is written, and a change refused in any part (a bad flag beside a good email, a budget
beside a limit) changes nothing. The callers only translate: the API from JSON and to
its status codes, the CLIs from flags or prompts and to one line on a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..records import (
    Alias,
    AliasScope,
    Budget,
    InvalidInputError,
    KeyLimits,
    KeyRecord,
    Price,
    Role,
    UserRecord,
)

if TYPE_CHECKING:  # (the CLIs import this module; the store is loaded when used)
    from ..db.store import Store


async def create_key(
    store: Store,
    user: str,
    name: str,
    role: Role = "user",
    expires_at: float | None = None,
    limits: KeyLimits = KeyLimits(),
    models: Sequence[str] | None = None,
    budget: Budget | None = None,
) -> tuple[KeyRecord, str]:
    """A new key of `user` (made when missing) and its secret, shown once."""
    return await store.create_key(user, name, role, expires_at, limits, models, budget)


async def change_key(store: Store, key_id: int, changes: Mapping[str, object]) -> KeyRecord:
    """Change an active key's role, expiry, limits, allow-list or budget (`budget`: a
    Budget, or None to remove it); the fields not named keep their values."""
    return await store.update_key(key_id, changes)


async def change_active_key(
    store: Store, user: str, name: str, changes: Mapping[str, object]
) -> KeyRecord:
    """As change_key, for the active key `user`/`name`, found in the same transaction."""
    return await store.update_key((user, name), changes)


async def revoke_key(store: Store, key_id: int) -> KeyRecord:
    """Revoke a key (the row stays for history; revoking a revoked key is no change)."""
    return await store.revoke_key_id(key_id)


async def revoke_key_by_preview(store: Store, preview: str) -> KeyRecord:
    """Revoke the key shown as `preview` (its display prefix, `aig_` and 8 characters);
    AmbiguousKeyError when several keys not yet revoked show it."""
    return await store.revoke_key_by_prefix(preview)


async def revoke_active_key(store: Store, user: str, name: str) -> KeyRecord:
    return await store.revoke_key(user, name)


async def purge_revoked(store: Store, user: str, name: str) -> int:
    """Delete the revoked rows of `user`/`name` for good; how many went."""
    return await store.purge_revoked(user, name)


async def create_user(
    store: Store,
    name: str,
    email: str | None = None,
    note: str | None = None,
    budget: Budget | None = None,
) -> UserRecord:
    return await store.create_user(name, email, note, budget)


async def change_user(store: Store, name: str, changes: Mapping[str, object]) -> UserRecord:
    """Change a user's email, note, budget (a Budget or None) or `disabled` (every key
    of a disabled user stops working, its sessions end)."""
    return await store.update_user(name, changes)


async def set_price(store: Store, price: Price) -> Price:
    return await store.set_price(price)


async def remove_price(store: Store, pattern: str) -> None:
    await store.remove_price(pattern)


def alias_owner(user: str | None = None, key_id: int | None = None) -> tuple[AliasScope, str]:
    """Whose an alias is: one user's keys, one key, or (neither named) everyone's."""
    if user is not None and key_id is not None:
        raise InvalidInputError("an alias is for a user or for a key, not both")
    if key_id is not None:
        return "key", str(key_id)
    if user is not None:
        return "user", user
    return "global", ""


async def list_aliases(store: Store) -> list[Alias]:
    return await store.list_aliases()


async def set_alias(
    store: Store, name: str, target: str, user: str | None = None, key_id: int | None = None
) -> Alias:
    """Make `name` run `target` for everyone, `user`'s keys or key `key_id` (the
    narrowest wins); the same name and owner again points it at another model."""
    return await store.set_alias(name, target, *alias_owner(user, key_id))


async def remove_alias(
    store: Store, name: str, user: str | None = None, key_id: int | None = None
) -> Alias:
    return await store.remove_alias(name, *alias_owner(user, key_id))
