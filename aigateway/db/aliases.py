"""The model_aliases table: names that run other models, for everyone, a user or a key.

An alias is checked whole before it is written, in the transaction that writes it:
its name and target are model names Ollama would take (protocol/names.py), the name is
no model the last sync found (an alias would hide it), and no alias points to an alias
(a target is no alias's name, a name no alias's target), so resolving one is one step.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..protocol.aliasnames import alias_identity, target_identity
from ..protocol.names import InvalidModelName, resolve
from ..records import (
    ALIAS_SCOPES,
    Alias,
    AliasScope,
    InvalidInputError,
    KeyNotFoundError,
)
from .connection import Connector
from .notify import keys_changed
from .schema import keys, model_aliases, models, users

_COLUMNS = (
    model_aliases.c.name,
    model_aliases.c.canonical,
    model_aliases.c.target,
    model_aliases.c.scope,
    model_aliases.c.owner,
    model_aliases.c.created_at,
)


def check_scope(scope: str, owner: str) -> tuple[AliasScope, str]:
    """The scope and its owner as stored: "" for global, a user's name, a key id."""
    if scope not in ALIAS_SCOPES:
        raise InvalidInputError(f"scope must be one of {', '.join(ALIAS_SCOPES)}")
    if scope == "global":
        if owner:
            raise InvalidInputError("a global alias names no user or key")
        return "global", ""
    if scope == "key":
        if not owner.isdecimal() or len(owner) > 18:
            raise InvalidInputError(f"a key is named by its id: {owner!r}")
        return "key", str(int(owner))
    if not owner:
        raise InvalidInputError("name the user the alias is for")
    return "user", owner


class AliasQueries(Connector):
    """Queries of the model_aliases table."""

    async def list_aliases(self) -> list[Alias]:
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(*_COLUMNS).order_by(
                        model_aliases.c.scope, model_aliases.c.owner, model_aliases.c.canonical
                    )
                )
            ).all()
        return [Alias(*row) for row in rows]

    async def set_alias(
        self, name: str, target: str, scope: str = "global", owner: str = ""
    ) -> Alias:
        """Add an alias, or point the one of that name and owner at another model."""
        written, canonical = alias_identity(name)
        aimed = target_identity(target)
        kind, owner = check_scope(scope, owner)
        if aimed == canonical:
            raise InvalidInputError(f"an alias cannot point to itself: {written!r}")
        async with self._write() as conn:
            await _check_owner(conn, kind, owner)
            await _check_no_chain(conn, canonical, aimed)
            await _check_no_model(conn, canonical, written)
            where = _the_alias(kind, owner, canonical)
            now = time.time()
            found = await conn.execute(
                update(model_aliases).where(*where).values(name=written, target=aimed)
            )
            if found.rowcount == 0:
                await conn.execute(
                    insert(model_aliases).values(
                        name=written, canonical=canonical, target=aimed, scope=kind,
                        owner=owner, created_at=now,
                    )
                )  # fmt: skip
            row = (await conn.execute(select(*_COLUMNS).where(*where))).one()
            await keys_changed(conn)  # gateways reload aliases with keys
        return Alias(*row)

    async def remove_alias(self, name: str, scope: str = "global", owner: str = "") -> Alias:
        """Remove the alias `name` of that owner (matched as requests match it)."""
        written, canonical = alias_identity(name)
        kind, owner = check_scope(scope, owner)
        where = _the_alias(kind, owner, canonical)
        async with self._write() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(*where))).first()
            if row is None:
                whose = "" if kind == "global" else f" of {kind} {owner}"
                raise KeyNotFoundError(f"no alias {written!r}{whose}")
            await conn.execute(delete(model_aliases).where(*where))
            await keys_changed(conn)
        return Alias(*row)


async def _check_owner(conn: AsyncConnection, scope: AliasScope, owner: str) -> None:
    if scope == "user":
        found = await conn.execute(select(users.c.id).where(users.c.name == owner))
        if found.first() is None:
            raise KeyNotFoundError(f"no user {owner!r}")
    elif scope == "key":
        row = (await conn.execute(select(keys.c.revoked).where(keys.c.id == int(owner)))).first()
        if row is None:
            raise KeyNotFoundError(f"no key with id {owner}")
        if row.revoked:
            raise InvalidInputError(f"key {owner} is revoked")


async def _check_no_chain(conn: AsyncConnection, canonical: str, target: str) -> None:
    """No alias points to an alias, whatever the scopes: a target is no alias's name,
    a name no other alias's target."""
    checks = (
        (model_aliases.c.canonical == target, "{} is an alias; an alias may not point to"
         " an alias (name its model)"),
        (model_aliases.c.target == canonical, "the alias {} points to this name; an alias"
         " may not point to an alias"),
    )  # fmt: skip
    for where, message in checks:
        found = (await conn.execute(select(model_aliases.c.name).where(where))).first()
        if found is not None:
            raise InvalidInputError(message.format(repr(found.name)))


def _the_alias(scope: AliasScope, owner: str, canonical: str) -> tuple[Any, ...]:
    """Where the alias `canonical` of that owner is."""
    return (
        model_aliases.c.scope == scope,
        model_aliases.c.owner == owner,
        model_aliases.c.canonical == canonical,
    )


async def _check_no_model(conn: AsyncConnection, canonical: str, written: str) -> None:
    """An alias may not take the name of a model the last sync found: requests for that
    model would silently run another. (A model pulled later under an alias's name is
    hidden by it: the alias wins, as the admin set it; see docs/aliases.md.)"""
    names = (await conn.execute(select(models.c.name))).scalars().all()
    for found in names:
        try:
            same = resolve(found).canonical == canonical
        except InvalidModelName:
            continue
        if same:
            raise InvalidInputError(
                f"{written!r} is a model the upstreams serve ({found}); an alias would hide it"
            )
