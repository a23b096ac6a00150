"""The users table: create, change, disable and list users, and set their budgets."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from ..records import (
    Budget,
    DuplicateKeyError,
    InvalidInputError,
    KeyNotFoundError,
    UserRecord,
    check_email,
    check_name,
    check_note,
    check_priority,
    priority_name,
)
from .connection import Connector
from .notify import keys_changed
from .schema import keys, sessions, users
from .values import budget_values, checked_budget, read_budget, read_time

USER_BUDGET_COLUMNS = (users.c.budget, users.c.budget_period, users.c.budget_alert)


class UserQueries(Connector):
    """Queries of the users table."""

    async def create_user(
        self,
        name: str,
        email: str | None = None,
        note: str | None = None,
        budget: Budget | None = None,
        priority: str | None = None,
    ) -> UserRecord:
        """A new user, with its budget and priority class if given, in one transaction."""
        check_name("user", name)
        values = {
            "name": name,
            "email": check_email(email),
            "note": check_note(note),
            "created_at": time.time(),
            "priority": check_priority(priority),
            **(budget_values(checked_budget(budget)) if budget is not None else {}),
        }
        async with self._write() as conn:
            try:
                await conn.execute(insert(users).values(values))
            except sa_exc.IntegrityError:
                raise DuplicateKeyError(f"user {name!r} exists already") from None
            if budget is not None or priority:
                await keys_changed(conn)  # gateways reload budgets and classes with keys
        return await self.get_user(name)

    async def get_user(self, name: str) -> UserRecord:
        async with self._read() as conn:
            row = (await conn.execute(_user_select().where(users.c.name == name))).first()
        if row is None:
            raise KeyNotFoundError(f"no user {name!r}")
        return _user(row)

    async def list_users(self) -> list[UserRecord]:
        async with self._read() as conn:
            rows = (await conn.execute(_user_select().order_by(users.c.name))).all()
        return [_user(row) for row in rows]

    async def update_user(self, name: str, changes: Mapping[str, object]) -> UserRecord:
        """Change a user's email or note ("" or None clears one), budget (a Budget, or
        None to remove it), priority (a class's name; None: normal) or `disabled` (True:
        all its keys stop working, on every gateway within a second, and their dashboard
        sessions end). Every value is checked before anything is written; the change is
        one transaction."""
        unknown = set(changes) - {"email", "note", "budget", "priority", "disabled"}
        if unknown:
            raise InvalidInputError(f"cannot change {', '.join(sorted(unknown))} of a user")
        values: dict[str, object] = {}
        if "email" in changes:
            values["email"] = check_email(_text_or_none("email", changes["email"]))
        if "note" in changes:
            values["note"] = check_note(_text_or_none("note", changes["note"]))
        if "budget" in changes:
            values.update(budget_values(checked_budget(changes["budget"])))
        if "priority" in changes:
            values["priority"] = check_priority(changes["priority"])
        disabled = changes.get("disabled")
        if "disabled" in changes:
            if not isinstance(disabled, bool):
                raise InvalidInputError("disabled must be true or false")
            values["disabled"] = int(disabled)
            values["disabled_at"] = time.time() if disabled else None
        if values:
            async with self._write() as conn:
                result = await conn.execute(
                    update(users).where(users.c.name == name).values(values)
                )
                if result.rowcount == 0:
                    raise KeyNotFoundError(f"no user {name!r}")
                if disabled:  # its keys stop working: their sessions end, not only pause
                    user_id = select(users.c.id).where(users.c.name == name).scalar_subquery()
                    its_keys = select(keys.c.id).where(keys.c.user_id == user_id)
                    await conn.execute(delete(sessions).where(sessions.c.key_id.in_(its_keys)))
                if changes.keys() & {"budget", "priority", "disabled"}:
                    await keys_changed(conn)  # gateways reload keys (budgets, classes)
        return await self.get_user(name)

    async def set_user_disabled(self, name: str, disabled: bool) -> UserRecord:
        """Disable a user (all its keys stop working) or enable it again."""
        return await self.update_user(name, {"disabled": disabled})

    async def set_user_budget(self, name: str, budget: Budget | None) -> UserRecord:
        """Set (or with None remove) the budget of a user, all its keys together."""
        return await self.update_user(name, {"budget": budget})


def _text_or_none(field: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInputError(f"{field} must be text or null")
    return value


def _user_select() -> Any:
    active = (
        select(func.count())
        .where(keys.c.user_id == users.c.id, keys.c.revoked == 0)
        .scalar_subquery()
    )
    return select(
        users.c.id,
        users.c.name,
        users.c.email,
        users.c.note,
        users.c.disabled,
        users.c.created_at,
        users.c.disabled_at,
        active,
        *USER_BUDGET_COLUMNS,
        users.c.priority,
    )


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        id=int(row[0]),
        name=str(row[1]),
        email=row[2],
        note=row[3],
        disabled=bool(row[4]),
        created_at=read_time(row[5]) or 0.0,
        disabled_at=read_time(row[6]),
        active_keys=int(row[7] or 0),
        budget=read_budget(row[8:11]),
        priority=row[11] if priority_name(row[11]) is not None else None,
    )


async def user_for_new_key(conn: AsyncConnection, name: str) -> int:
    """The id of user `name`, made now if it has no record yet; a disabled user gets no
    new key (it would not work)."""
    row = (
        await conn.execute(select(users.c.id, users.c.disabled).where(users.c.name == name))
    ).first()
    if row is None:
        made = await conn.execute(
            insert(users).values(name=name, created_at=time.time()).returning(users.c.id)
        )
        return int(made.scalar_one())
    if row.disabled:
        raise InvalidInputError(f"user {name!r} is disabled: enable it first")
    return int(row.id)
