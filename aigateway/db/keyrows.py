"""The keys table: create, change, revoke, purge and list keys, their budgets and when
they were last used. (What a key is, its format and hash, is keys.py, which needs no
database.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from ..records import (
    LIMIT_FIELDS,
    NORMAL_PRIORITY,
    ROLES,
    AmbiguousKeyError,
    Budget,
    CapReachedError,
    DuplicateKeyError,
    InvalidInputError,
    KeyLimits,
    KeyNotFoundError,
    KeyRecord,
    NotPermittedError,
    Role,
    budget_lines,
    check_allow_list,
    check_expiry,
    check_limits,
    check_name,
    check_priority,
    priority_name,
)
from .connection import Connector
from .keys import generate_key
from .notify import keys_changed
from .schema import keys, users
from .sessions import end_sessions_of
from .users import USER_BUDGET_COLUMNS, user_for_new_key
from .values import (
    budget_values,
    checked_budget,
    models_json,
    read_budget,
    read_limit,
    read_models,
    read_time,
)

_KEY_COLUMNS = (
    keys.c.id,
    keys.c.user,
    keys.c.name,
    keys.c.key_hash,
    keys.c.prefix,
    keys.c.role,
    keys.c.created_at,
    keys.c.expires_at,
    keys.c.last_used_at,
    keys.c.revoked,
    keys.c.revoked_at,
    keys.c.rpm,
    keys.c.rph,
    keys.c.tokens_per_day,
    keys.c.max_concurrent,
    keys.c.models,
    keys.c.user_id,
    keys.c.budget,
    keys.c.budget_period,
    keys.c.budget_alert,
    keys.c.created_by,
    keys.c.priority,
)
_JOINED_AT = len(_KEY_COLUMNS)  # where a joined row's user columns begin


class KeyQueries(Connector):
    """Queries of the keys table."""

    async def create_key(
        self,
        user: str,
        name: str,
        role: Role = "user",
        expires_at: float | None = None,
        limits: KeyLimits = KeyLimits(),
        models: Sequence[str] | None = None,
        budget: Budget | None = None,
        creator: Creator | None = None,
        priority: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key, with its own budget if given, in one transaction; return its
        record and the secret (shown once, never stored). With a `creator` (self-service)
        the creator's row is locked, checked by `creator.check` as it is now, and its
        active keys counted against `creator.cap` in the same transaction, so that
        simultaneous creates cannot pass the cap (SQLite: one writer; PostgreSQL: the
        row lock)."""
        check_name("user", user)
        check_name("key name", name)
        if role not in ROLES:
            raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        check_limits(limits)
        expires_at = check_expiry(expires_at)
        patterns = check_allow_list(models)
        new = generate_key()
        values = {
            "user": user,
            "name": name,
            "key_hash": new.key_hash,
            "prefix": new.display_prefix,
            "role": role,
            "created_at": time.time(),
            "expires_at": expires_at,
            "rpm": limits.rpm,
            "rph": limits.rph,
            "tokens_per_day": limits.tokens_per_day,
            "max_concurrent": limits.max_concurrent,
            "models": models_json(patterns),
            "priority": check_priority(priority),
            **(budget_values(checked_budget(budget)) if budget is not None else {}),
        }
        async with self._write() as conn:
            if creator is not None:
                values["created_by"] = await _admit_creator(conn, creator)
            values["user_id"] = await user_for_new_key(conn, user)
            try:
                statement = insert(keys).values(values).returning(keys.c.id)
                key_id = (await conn.execute(statement)).scalar_one()
            except sa_exc.IntegrityError:  # the one active key per user and name
                raise DuplicateKeyError(
                    f"user {user!r} already has an active key named {name!r}"
                ) from None
            await keys_changed(conn)
            # read back with its user's columns (the class it takes from its user)
            row = (await conn.execute(_key_select().where(keys.c.id == key_id))).one()
        return _record(row), new.secret

    async def update_key(
        self, key: int | tuple[str, str], changes: Mapping[str, object]
    ) -> KeyRecord:
        """Change role, expires_at, limits (rpm, rph, tokens_per_day, max_concurrent),
        models, priority (a class's name, or None for its user's) or budget (a Budget,
        or None to remove it) of an active key, by id or as (user, name). Values are
        checked as in create_key, all of them before anything is written; the change is
        one transaction."""
        values = _key_changes(changes)
        async with self._write() as conn:
            row = await _active_row(conn, key)
            if values:
                await conn.execute(update(keys).where(keys.c.id == row.id).values(values))
                if values.get("expires_at") is not None:
                    await _clamp_expiry_of_children(conn, row.id, values["expires_at"])
                await keys_changed(conn)
                row = (await conn.execute(_key_select().where(keys.c.id == row.id))).one()
        return _record(row)

    async def get_key(self, key_id: int) -> KeyRecord:
        async with self._read() as conn:
            row = (await conn.execute(_key_select().where(keys.c.id == key_id))).first()
        if row is None:
            raise KeyNotFoundError(f"no key with id {key_id}")
        return _record(row)

    async def find_active_key(self, user: str, name: str) -> KeyRecord:
        async with self._read() as conn:
            row = await _active_row(conn, (user, name))
        return _record(row)

    async def revoke_key_id(self, key_id: int) -> KeyRecord:
        record = await self.get_key(key_id)
        if record.revoked:
            return record
        return await self.revoke_key(record.user, record.name)

    async def revoke_key_by_prefix(self, prefix: str) -> KeyRecord:
        """Revoke the key whose display prefix is `prefix`, in one transaction: of the
        keys that show it, the one not revoked yet (revoking a revoked key is no change);
        AmbiguousKeyError, naming their ids, when several could be meant."""
        async with self._write() as conn:
            rows = (
                await conn.execute(_key_select().where(keys.c.prefix == prefix).order_by(keys.c.id))
            ).all()
            if not rows:
                raise KeyNotFoundError(f"no key shows the preview {prefix!r}")
            candidates = [row for row in rows if not row.revoked] or rows
            if len(candidates) > 1:
                ids = ", ".join(str(row.id) for row in candidates)
                raise AmbiguousKeyError(
                    f"the preview {prefix!r} is shared by keys {ids}: revoke one by its id"
                )
            row = candidates[0]
            if row.revoked:
                return _record(row)
            await conn.execute(
                update(keys).where(keys.c.id == row.id).values(revoked=1, revoked_at=time.time())
            )
            await end_sessions_of(conn, [row.id, *await _revoke_children(conn, row.id)])
            await keys_changed(conn)
            row = (await conn.execute(_key_select().where(keys.c.id == row.id))).one()
        return _record(row)

    async def revoke_key(self, user: str, name: str) -> KeyRecord:
        """Mark the active key `user`/`name` revoked; the row stays for history."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(keys)
                    .where(keys.c.user == user, keys.c.name == name, keys.c.revoked == 0)
                    .values(revoked=1, revoked_at=time.time())
                    .returning(*_KEY_COLUMNS)
                )
            ).first()
            if row is None:
                raise await _no_active_key(conn, user, name)
            await end_sessions_of(conn, [row.id, *await _revoke_children(conn, row.id)])
            await keys_changed(conn)
        return _record(row)

    async def keys_made_by(self, creator_id: int) -> list[KeyRecord]:
        """The keys `creator_id` made by self-service, revoked ones too, oldest first."""
        async with self._read() as conn:
            found = _key_select().where(keys.c.created_by == creator_id).order_by(keys.c.id)
            rows = (await conn.execute(found)).all()
        return [_record(row) for row in rows]

    async def revoke_key_made_by(self, creator_id: int, key_id: int) -> KeyRecord:
        """Revoke key `key_id` if `creator_id` made it (checked in the same transaction);
        NotPermittedError otherwise, alike for a key of another and for no key at all (the
        answer tells nothing of keys not one's own). Revoking a revoked key is no change."""
        async with self._write() as conn:
            mine = _key_select().where(keys.c.id == key_id, keys.c.created_by == creator_id)
            row = (await conn.execute(mine)).first()
            if row is None:
                raise NotPermittedError(f"this key may revoke only keys it made; {key_id} is not")
            if not row.revoked:
                await conn.execute(
                    update(keys)
                    .where(keys.c.id == key_id)
                    .values(revoked=1, revoked_at=time.time())
                )
                await end_sessions_of(conn, [key_id])
                await keys_changed(conn)
                row = (await conn.execute(_key_select().where(keys.c.id == key_id))).one()
        return _record(row)

    async def purge_revoked(self, user: str, name: str) -> int:
        """Delete the revoked rows of `user`/`name` for good; return how many went."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(keys)
                .where(keys.c.user == user, keys.c.name == name, keys.c.revoked == 1)
                .returning(keys.c.id)
            )
            purged_ids = [row[0] for row in result.all()]
            purged = len(purged_ids)
            if purged == 0:
                active = await conn.execute(
                    select(keys.c.id).where(
                        keys.c.user == user, keys.c.name == name, keys.c.revoked == 0
                    )
                )
                if active.first() is not None:
                    raise KeyNotFoundError(
                        f"the key {user}/{name} is active: revoke it first (-d), then purge"
                    )
                raise KeyNotFoundError(f"user {user!r} has no revoked key named {name!r}")
            await end_sessions_of(conn, purged_ids)  # a session made before revocation
            await keys_changed(conn)
        return purged

    async def list_keys(self) -> list[KeyRecord]:
        async with self._read() as conn:
            rows = (await conn.execute(_key_select().order_by(keys.c.id))).all()
        return [_record(row) for row in rows]

    async def set_key_budget(self, key_id: int, budget: Budget | None) -> KeyRecord:
        """Set (or with None remove) the budget of one key, besides its user's."""
        return await self.update_key(key_id, {"budget": budget})

    async def record_last_used(self, used: Mapping[int, float]) -> None:
        """Write a batch of `key id -> last use time`; never moves a time backwards.
        (Not a key change: other gateways need not reload for it.)"""
        if not used:
            return
        statement = (
            update(keys)
            .where(
                keys.c.id == bindparam("b_id"),
                or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < bindparam("b_when")),
            )
            .values(last_used_at=bindparam("b_when"))
        )
        async with self._write() as conn:
            await conn.execute(
                statement, [{"b_id": key_id, "b_when": when} for key_id, when in used.items()]
            )


@dataclass(frozen=True, slots=True)
class Creator:
    """The key making a key by self-service: its id, how many active keys of its making
    it may have, and the check of the new key against the creator as it is in the
    transaction (raising to refuse)."""

    key_id: int
    cap: int
    check: Callable[[KeyRecord], None]


def _active_children() -> Any:
    """The condition of a key made by self-service that still works (or may again)."""
    return (keys.c.revoked == 0) & (keys.c.expires_at.is_(None) | (keys.c.expires_at > time.time()))


async def _admit_creator(conn: AsyncConnection, creator: Creator) -> int:
    """Lock the creator's row, check the new key against it, and count its active keys
    against its cap; the creator's id."""
    locked = _key_select().where(keys.c.id == creator.key_id).with_for_update(of=keys)
    row = (await conn.execute(locked)).first()
    if row is None:
        raise KeyNotFoundError(f"no key with id {creator.key_id}")
    record = _record(row)
    if record.status() != "active":
        raise NotPermittedError(f"this key is {record.status()}: it cannot make keys")
    creator.check(record)
    count = select(func.count()).where(keys.c.created_by == creator.key_id, _active_children())
    made = (await conn.execute(count)).scalar_one()
    if made >= creator.cap:
        raise CapReachedError(
            f"this key already has {made} active keys of its making, as many as it may"
            f" (SELF_SERVICE_KEYS={creator.cap}): revoke one first"
        )
    return creator.key_id


async def _revoke_children(conn: AsyncConnection, creator_id: int) -> list[int]:
    """Revoke with its creator every key it made that is not revoked yet (a take and its
    release together: a child never outlives its maker); their ids."""
    result = await conn.execute(
        update(keys)
        .where(keys.c.created_by == creator_id, keys.c.revoked == 0)
        .values(revoked=1, revoked_at=time.time())
        .returning(keys.c.id)
    )
    return [row[0] for row in result.all()]


async def _clamp_expiry_of_children(conn: AsyncConnection, creator_id: int, until: object) -> None:
    """A creator given an earlier expiry takes its keys' expiries with it."""
    await conn.execute(
        update(keys)
        .where(
            keys.c.created_by == creator_id,
            keys.c.revoked == 0,
            keys.c.expires_at.is_(None) | (keys.c.expires_at > until),
        )
        .values(expires_at=until)
    )


def _key_changes(changes: Mapping[str, object]) -> dict[str, object]:
    """The columns `changes` set, every value checked (InvalidInputError names the first
    that is not right)."""
    allowed = {"role", "expires_at", "models", "budget", "priority", *LIMIT_FIELDS}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInputError(f"cannot change {', '.join(sorted(unknown))}")
    values: dict[str, object] = {}
    for field, value in changes.items():
        if field == "role":
            if value not in ROLES:
                raise InvalidInputError(f"role must be one of {', '.join(ROLES)}")
            values[field] = value
        elif field == "models":
            values[field] = models_json(check_allow_list(value))  # type: ignore[arg-type]
        elif field == "expires_at":
            values[field] = check_expiry(value)
        elif field == "budget":
            values.update(budget_values(checked_budget(value)))
        elif field == "priority":
            values[field] = check_priority(value)
        else:
            check_limits(KeyLimits(**{field: value}))  # type: ignore[arg-type]
            values[field] = value
    return values


async def _active_row(conn: AsyncConnection, key: int | tuple[str, str]) -> Any:
    """The row of the key to change: by id (which must not be revoked), or the active
    key (user, name)."""
    if isinstance(key, tuple):
        user, name = key
        where = (keys.c.user == user, keys.c.name == name, keys.c.revoked == 0)
        row = (await conn.execute(_key_select().where(*where))).first()
        if row is None:
            raise await _no_active_key(conn, user, name)
        return row
    row = (await conn.execute(_key_select().where(keys.c.id == key))).first()
    if row is None:
        raise KeyNotFoundError(f"no key with id {key}")
    if row.revoked:
        raise InvalidInputError(f"key {key} is revoked and cannot be changed")
    return row


def _key_select() -> Any:
    """Keys with their user's disabled flag (a key row written before users existed, or
    by hand, may have no user record: it counts as not disabled)."""
    columns = (*_KEY_COLUMNS, users.c.disabled, *USER_BUDGET_COLUMNS, users.c.priority)
    return select(*columns).select_from(keys.outerjoin(users, users.c.id == keys.c.user_id))


async def _no_active_key(conn: AsyncConnection, user: str, name: str) -> KeyNotFoundError:
    """Why `user`/`name` names no active key: no such user, or no such key."""
    found = await conn.execute(select(keys.c.id).where(keys.c.user == user).limit(1))
    if found.first() is None:
        return KeyNotFoundError(f"no user {user!r}")
    return KeyNotFoundError(f"user {user!r} has no active key named {name!r}")


def _record(row: Sequence[Any]) -> KeyRecord:
    """A key row as a record, whatever an older version or a hand edit left in it: a
    value that cannot be what its column means is read as the safest thing it could be
    (no time, no limit of its own, no model allowed), never as an error for the listing.
    The user's columns are there when the row was read with _key_select."""
    joined = len(row) > _JOINED_AT
    user, name = str(row[1]), str(row[2])
    user_id = row[16] if isinstance(row[16], int) else None
    budget = read_budget(row[17:20])
    user_budget = read_budget(row[_JOINED_AT + 1 : _JOINED_AT + 4]) if joined else None
    priority = _read_priority(row[21])
    user_priority = _read_priority(row[_JOINED_AT + 4]) if joined else None
    return KeyRecord(
        id=row[0],
        user=user,
        name=name,
        key_hash=str(row[3]),
        prefix=str(row[4]),
        role=row[5] if row[5] in ROLES else "user",
        created_at=read_time(row[6]) or 0.0,
        expires_at=None if row[7] is None else read_time(row[7]) or 0.0,  # unreadable: expired
        last_used_at=read_time(row[8]),
        revoked=bool(row[9]),
        revoked_at=read_time(row[10]),
        limits=KeyLimits(*(read_limit(value) for value in row[11:15])),
        models=read_models(row[15]),
        user_disabled=joined and bool(row[_JOINED_AT]),
        user_id=user_id,
        budget=budget,
        user_budget=user_budget,
        budgets=budget_lines(row[0], user, name, user_id, budget, user_budget),
        created_by=row[20] if isinstance(row[20], int) else None,
        priority=priority,
        queue_class=next((p for p in (priority, user_priority) if p is not None), NORMAL_PRIORITY),
    )


def _read_priority(value: object) -> int | None:
    """A stored priority class, or None for one no release wrote (read as none)."""
    return value if isinstance(value, int) and priority_name(value) is not None else None
