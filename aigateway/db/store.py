"""Every query lives here, written once with SQLAlchemy Core for SQLite and PostgreSQL;
opening the database and its transactions are connection.py."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..records import (
    DAY,
    LIMIT_FIELDS,
    MAX_INT,
    MAX_SUM_NANO,
    MODEL_FIELDS,
    PRICE_FIELDS,
    ROLES,
    USAGE_COLUMNS,
    Budget,
    DuplicateKeyError,
    InvalidInputError,
    KeyLimits,
    KeyNotFoundError,
    KeyRecord,
    LocalUsageRecord,
    ModelInfo,
    Price,
    PriceError,
    Role,
    UsageQuery,
    UsageRecord,
    UserRecord,
    budget_lines,
    check_allow_list,
    check_email,
    check_expiry,
    check_limits,
    check_name,
    check_note,
    check_price,
    micro,
    saturated,
)
from .connection import DRIVER_REFUSALS, Connector, driver_connection, first_line
from .keys import generate_key
from .notify import keys_changed
from .rollups import (
    BUCKETS,
    HOUR,
    SUM_COLUMNS,
    Totals,
    bucket,
    rollup_rows,
    upsert_sql,
    whole_hours,
)
from .schema import (
    keys,
    models,
    prices,
    sessions,
    usage,
    usage_hourly,
    usage_segments,
    users,
)
from .values import (
    TOKENS,
    budget_values,
    cost_sum,
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
)
_USER_BUDGET_COLUMNS = (users.c.budget, users.c.budget_period, users.c.budget_alert)
_PRICE_COLUMNS = (prices.c.pattern, *(prices.c[field] for field in PRICE_FIELDS))
MAX_SESSIONS_PER_KEY = 20  # live dashboard sessions a key may hold; a new one ends the oldest


class UsageRejected(Exception):
    """The database refused a batch of usage records for a value in one of them (not
    because it is busy or away): retrying the same batch cannot help."""


USAGE_CHUNK = 500  # records an export reads, and writes, at a time


class Store(Connector):
    """An open database and every query on it: `await Store.open(path or URL)`."""

    # --- keys -------------------------------------------------------------------------

    async def create_key(
        self,
        user: str,
        name: str,
        role: Role = "user",
        expires_at: float | None = None,
        limits: KeyLimits = KeyLimits(),
        models: Sequence[str] | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key and return its record and the secret (shown once, never stored)."""
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
        }
        async with self._write() as conn:
            values["user_id"] = await _user_for_new_key(conn, user)
            try:
                statement = insert(keys).values(values).returning(*_KEY_COLUMNS)
                row = (await conn.execute(statement)).one()
            except sa_exc.IntegrityError:  # the one active key per user and name
                raise DuplicateKeyError(
                    f"user {user!r} already has an active key named {name!r}"
                ) from None
            await keys_changed(conn)
        return _record(row), new.secret

    async def update_key(self, key_id: int, changes: Mapping[str, object]) -> KeyRecord:
        """Change role, expires_at, limits (rpm, rph, tokens_per_day, max_concurrent) or
        models of an active key. Values are checked as in create_key."""
        allowed = {"role", "expires_at", "models", *LIMIT_FIELDS}
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
            else:
                check_limits(KeyLimits(**{field: value}))  # type: ignore[arg-type]
                values[field] = value
        record = await self.get_key(key_id)
        if record.revoked:
            raise InvalidInputError(f"key {key_id} is revoked and cannot be changed")
        if not values:
            return record
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(keys).where(keys.c.id == key_id).values(values).returning(*_KEY_COLUMNS)
                )
            ).one()
            await keys_changed(conn)
        return _record(row)

    async def get_key(self, key_id: int) -> KeyRecord:
        async with self._read() as conn:
            row = (await conn.execute(_key_select().where(keys.c.id == key_id))).first()
        if row is None:
            raise KeyNotFoundError(f"no key with id {key_id}")
        return _record(row)

    async def find_active_key(self, user: str, name: str) -> KeyRecord:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    _key_select().where(
                        keys.c.user == user, keys.c.name == name, keys.c.revoked == 0
                    )
                )
            ).first()
            if row is None:
                raise await _no_active_key(conn, user, name)
        return _record(row)

    async def revoke_key_id(self, key_id: int) -> KeyRecord:
        record = await self.get_key(key_id)
        if record.revoked:
            return record
        return await self.revoke_key(record.user, record.name)

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
            await _end_sessions_of(conn, [row.id])
            await keys_changed(conn)
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
            await _end_sessions_of(conn, purged_ids)  # a session made before revocation
            await keys_changed(conn)
        return purged

    async def list_keys(self) -> list[KeyRecord]:
        async with self._read() as conn:
            rows = (await conn.execute(_key_select().order_by(keys.c.id))).all()
        return [_record(row) for row in rows]

    # --- users ------------------------------------------------------------------------

    async def create_user(
        self, name: str, email: str | None = None, note: str | None = None
    ) -> UserRecord:
        check_name("user", name)
        values = {
            "name": name,
            "email": check_email(email),
            "note": check_note(note),
            "created_at": time.time(),
        }
        async with self._write() as conn:
            try:
                await conn.execute(insert(users).values(values))
            except sa_exc.IntegrityError:
                raise DuplicateKeyError(f"user {name!r} exists already") from None
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

    async def update_user(self, name: str, changes: Mapping[str, str | None]) -> UserRecord:
        """Change a user's email or note ("" or None clears one)."""
        unknown = set(changes) - {"email", "note"}
        if unknown:
            raise InvalidInputError(f"cannot change {', '.join(sorted(unknown))} of a user")
        values: dict[str, object] = {}
        if "email" in changes:
            values["email"] = check_email(changes["email"])
        if "note" in changes:
            values["note"] = check_note(changes["note"])
        if values:
            async with self._write() as conn:
                result = await conn.execute(
                    update(users).where(users.c.name == name).values(values)
                )
                if result.rowcount == 0:
                    raise KeyNotFoundError(f"no user {name!r}")
        return await self.get_user(name)

    async def set_user_disabled(self, name: str, disabled: bool) -> UserRecord:
        """Disable a user (all its keys stop working, on every gateway within a second)
        or enable it again."""
        async with self._write() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.name == name)
                .values(disabled=int(disabled), disabled_at=time.time() if disabled else None)
            )
            if result.rowcount == 0:
                raise KeyNotFoundError(f"no user {name!r}")
            if disabled:  # its keys stop working: their sessions end, not only pause
                await conn.execute(
                    delete(sessions).where(
                        sessions.c.key_id.in_(
                            select(keys.c.id).where(
                                keys.c.user_id
                                == select(users.c.id).where(users.c.name == name).scalar_subquery()
                            )
                        )
                    )
                )
            await keys_changed(conn)
        return await self.get_user(name)

    # --- prices -------------------------------------------------------------------------

    async def list_prices(self) -> list[Price]:
        async with self._read() as conn:
            rows = (await conn.execute(select(*_PRICE_COLUMNS).order_by(prices.c.pattern))).all()
        return [Price(*row) for row in rows]

    async def set_price(self, price: Price) -> Price:
        """Add or replace the price of a model pattern. Usage already recorded keeps the
        cost it was given; requests that start from now on pay this."""
        try:
            price = check_price(price)
        except PriceError as exc:
            raise InvalidInputError(str(exc)) from None
        values = {field: getattr(price, field) for field in PRICE_FIELDS}
        async with self._write() as conn:
            found = await conn.execute(
                update(prices)
                .where(prices.c.pattern == price.pattern)
                .values(**values, updated_at=time.time())
            )
            if found.rowcount == 0:
                await conn.execute(
                    insert(prices).values(pattern=price.pattern, **values, updated_at=time.time())
                )
            await keys_changed(conn)  # gateways reload prices with keys
        return price

    async def remove_price(self, pattern: str) -> None:
        async with self._write() as conn:
            result = await conn.execute(delete(prices).where(prices.c.pattern == pattern))
            if result.rowcount == 0:
                raise KeyNotFoundError(f"no price for {pattern!r}")
            await keys_changed(conn)

    # --- dashboard sessions -------------------------------------------------------------

    async def create_session(
        self, id_hash: str, key_id: int, expires_at: float, keep: int = MAX_SESSIONS_PER_KEY
    ) -> None:
        """Store a new session of `key_id`; the key's oldest sessions beyond `keep` (this
        one included) end in the same transaction."""
        now = time.time()
        async with self._write() as conn:
            await conn.execute(
                insert(sessions).values(
                    id_hash=id_hash,
                    key_id=key_id,
                    created_at=now,
                    seen_at=now,
                    expires_at=expires_at,
                )
            )
            newest_others = (
                select(sessions.c.id_hash)
                .where(sessions.c.key_id == key_id, sessions.c.id_hash != id_hash)
                .order_by(sessions.c.created_at.desc(), sessions.c.id_hash)
                .limit(keep - 1)
            )
            await conn.execute(
                delete(sessions).where(
                    sessions.c.key_id == key_id,
                    sessions.c.id_hash != id_hash,
                    sessions.c.id_hash.not_in(newest_others.scalar_subquery()),
                )
            )

    async def sweep_sessions(self, now: float, idle_s: float) -> int:
        """Delete every session past its expiry or idle longer than `idle_s`; how many."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(sessions).where(
                    or_(sessions.c.expires_at <= now, sessions.c.seen_at < now - idle_s)
                )
            )
        return int(result.rowcount)

    async def find_session(self, id_hash: str) -> tuple[int, float, float] | None:
        """(key id, last seen, absolute expiry) of a session, or None."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.key_id, sessions.c.seen_at, sessions.c.expires_at).where(
                        sessions.c.id_hash == id_hash
                    )
                )
            ).first()
        return None if row is None else (int(row[0]), float(row[1]), float(row[2]))

    async def touch_session(self, id_hash: str, seen_at: float) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(sessions).where(sessions.c.id_hash == id_hash).values(seen_at=seen_at)
            )

    async def end_session(self, id_hash: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.id_hash == id_hash))

    # --- models -------------------------------------------------------------------------

    async def replace_models(self, found: Sequence[ModelInfo]) -> None:
        """What a sync found, in place of what the last one did (one transaction)."""
        now = time.time()
        rows = [
            {field: getattr(info, field) for field in MODEL_FIELDS} | {"synced_at": now}
            for info in found
        ]
        async with self._write() as conn:
            await conn.execute(delete(models))
            if rows:
                await conn.execute(insert(models), rows)

    async def list_models(self) -> tuple[list[ModelInfo], float | None]:
        """The models of the last sync, by name, and when it ran (None: never)."""
        fields = [models.c[field] for field in MODEL_FIELDS]
        async with self._read() as conn:
            rows = (
                await conn.execute(select(*fields, models.c.synced_at).order_by(models.c.name))
            ).all()
        synced = max((row[-1] for row in rows), default=None)
        return [ModelInfo(*row[:-1]) for row in rows], synced

    # --- budgets ------------------------------------------------------------------------

    async def set_user_budget(self, name: str, budget: Budget | None) -> UserRecord:
        """Set (or with None remove) the budget of a user, all its keys together."""
        async with self._write() as conn:
            result = await conn.execute(
                update(users).where(users.c.name == name).values(budget_values(budget))
            )
            if result.rowcount == 0:
                raise KeyNotFoundError(f"no user {name!r}")
            await keys_changed(conn)  # gateways reload budgets with keys
        return await self.get_user(name)

    async def set_key_budget(self, key_id: int, budget: Budget | None) -> KeyRecord:
        """Set (or with None remove) the budget of one key, besides its user's."""
        record = await self.get_key(key_id)
        if record.revoked:
            raise InvalidInputError(f"key {key_id} is revoked and cannot be changed")
        async with self._write() as conn:
            await conn.execute(
                update(keys).where(keys.c.id == key_id).values(budget_values(budget))
            )
            await keys_changed(conn)
        return await self.get_key(key_id)

    async def spend_since(self, owner: str, since: float) -> int:
        """What a budget's owner (`key:ID` or `user:ID`) has spent since `since`, by the
        usage records written so far."""
        kind, _, number = owner.partition(":")
        owner_id = int(number)
        if kind == "key":
            which = usage.c.key_id == owner_id
        else:
            which = usage.c.key_id.in_(select(keys.c.id).where(keys.c.user_id == owner_id))
        async with self._read() as conn:
            spent = (
                await conn.execute(select(cost_sum(usage.c.cost)).where(which, usage.c.ts >= since))
            ).scalar()
        return saturated(spent)

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

    # --- usage ------------------------------------------------------------------------

    async def insert_usage(
        self, records: Sequence[UsageRecord], segment: str | None = None
    ) -> None:
        """Insert a batch in one transaction, with the name of the journal segment it
        comes from; a segment written before is not written again (exactly once). A value
        the database refuses raises UsageRejected: retrying the same batch cannot help."""
        if not records and segment is None:
            return
        async with self._write() as conn:
            try:
                if segment is not None and not await _claim_segment(conn, segment):
                    return  # written before (a replay): exactly once
                await _insert_usage_rows(conn, records)
                await _add_to_rollups(conn, records)
                if conn.dialect.name == "postgresql":
                    await _share_counts(conn, records)
            except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
                raise UsageRejected(first_line(exc.orig)) from None
            except sa_exc.StatementError as exc:
                if isinstance(exc, sa_exc.DBAPIError):
                    raise  # the database is busy or away: the batch waits, not rejected
                raise UsageRejected(first_line(exc.orig or exc)) from None  # not bindable
            except DRIVER_REFUSALS as exc:
                raise UsageRejected(first_line(exc)) from None

    async def segment_written(self, segment: str) -> bool:
        """Whether the journal segment `segment` is in the database already."""
        async with self._read() as conn:
            return await _segment_exists(conn, segment)

    async def forget_segments(self, before: float) -> None:
        """Drop the names of segments written before `before` (their files are gone)."""
        async with self._write() as conn:
            await conn.execute(delete(usage_segments).where(usage_segments.c.written_at < before))

    async def tokens_since(self, since: float) -> dict[int, int]:
        """Prompt + completion tokens per key id since `since` (for daily quotas)."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(usage.c.key_id, func.sum(TOKENS))
                    .where(usage.c.ts >= since)
                    .group_by(usage.c.key_id)
                )
            ).all()
        return {int(row[0]): int(row[1] or 0) for row in rows}

    async def prune_usage(self, before: float) -> int:
        """Delete the records, and the rollup rows, of the hours before the one `before`
        falls in (whole hours, so that the rollups keep summing the records there are)."""
        cutoff = before // HOUR * HOUR
        async with self._write() as conn:
            result = await conn.execute(delete(usage).where(usage.c.ts < cutoff))
            await conn.execute(delete(usage_hourly).where(usage_hourly.c.hour < cutoff))
            return result.rowcount

    async def usage_rows(
        self,
        since: float | None = None,
        until: float | None = None,
        key_id: int | None = None,
        user: str | None = None,
    ) -> list[UsageRecord]:
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(*columns)
                    .where(*_usage_filter(since, until, key_id, user))
                    .order_by(usage.c.ts, usage.c.id)
                )
            ).all()
        return [_usage_record(row) for row in rows]

    async def usage_page(
        self, where: UsageQuery, limit: int, offset: int = 0
    ) -> list[tuple[int, UsageRecord]]:
        """Records that match `where`, newest first, `limit` from `offset`, each with its
        id (for paging and reference)."""
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        statement = (
            select(usage.c.id, *columns)
            .where(*_usage_query_filter(where))
            .order_by(usage.c.ts.desc(), usage.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        return [(int(row[0]), _usage_record(row[1:])) for row in rows]

    async def usage_chunks(
        self,
        where: UsageQuery,
        *,
        newest_first: bool,
        most: int | None = None,
        chunk: int = USAGE_CHUNK,
    ) -> AsyncGenerator[list[UsageRecord], None]:
        """Records that match `where` (at most `most`), `chunk` at a time, each chunk its
        own short read: an export of any size holds one chunk in memory, and no read
        transaction stays open while the client takes its time. Pages are keyset pages
        on (ts, id), so a record written meanwhile neither shifts nor repeats a row."""
        columns = [usage.c[name] for name in USAGE_COLUMNS]
        ts, rid = usage.c.ts, usage.c.id
        order = (ts.desc(), rid.desc()) if newest_first else (ts, rid)
        clauses = _usage_query_filter(where)
        after: tuple[float, int] | None = None
        left = most
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            statement = select(rid, *columns).where(*clauses)
            if after is not None:
                statement = statement.where(_past(after, newest_first))
            async with self._read() as conn:
                rows = (await conn.execute(statement.order_by(*order).limit(size))).all()
            if not rows:
                return
            after = (rows[-1][1], rows[-1][0])
            if left is not None:
                left -= len(rows)
            yield [_usage_record(row[1:]) for row in rows]
            if len(rows) < size:
                return

    async def usage_series(
        self, since: float, bucket_s: int, key_id: int | None = None
    ) -> list[dict[str, object]]:
        """Requests, tokens, cost, errors and early leaves per `bucket_s` seconds since
        `since` (buckets with no request are left out), oldest first. Hourly series read
        whole hours from the rollups."""
        hours = whole_hours(since, None) if bucket_s == HOUR else None
        dim = "all" if key_id is None else "key"
        if self.database.backend == "sqlite":
            bucket = cast(usage.c.ts / bucket_s, Integer)  # truncates: ts is positive
        else:
            bucket = cast(func.floor(usage.c.ts / bucket_s), BigInteger)
        raw = select(
            bucket * bucket_s,
            func.count(),
            func.sum(TOKENS),
            cost_sum(usage.c.cost),
            func.sum(case((usage.c.status >= 400, 1), else_=0)),
            func.sum(usage.c.client_gone),
        ).group_by(bucket)
        found: dict[int, list[int]] = {}
        async with self._read() as conn:
            if hours is None:
                parts = [raw.where(*_usage_filter(since, None, key_id))]
            else:
                h = usage_hourly.c
                rolled = (
                    select(
                        h.hour,
                        func.sum(h.requests),
                        func.sum(h.prompt_tokens + h.completion_tokens),
                        cost_sum(h.cost),
                        func.sum(h.errors),
                        func.sum(h.client_gone),
                    )
                    .where(*_rollup_filter(dim, hours, key_id, None))
                    .group_by(h.hour)
                )
                parts = [rolled, raw.where(*_usage_filter(since, hours[0], key_id))]
            for statement in parts:
                for row in (await conn.execute(statement)).all():
                    sums = found.setdefault(int(row[0]), [0] * 5)
                    for i, value in enumerate(row[1:]):
                        sums[i] += int(value or 0)
        for sums in found.values():
            sums[2] = micro(saturated(sums[2]))  # (cost: nano-units, shown in micro-units)
        return [
            dict(zip(("start", *_SERIES_FIELDS), (start, *found[start]), strict=True))
            for start in sorted(found)
        ]

    async def usage_summary(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        key_id: int | None = None,
        user: str | None = None,
        exact: bool = False,
    ) -> list[dict[str, object]]:
        """Requests, tokens and durations grouped by any of user, key_name, key_id, model,
        route (of one user's records, with `user`). With `exact` (the CLIs' reports) every
        record is read and percentiles are exact; otherwise whole hours come from the
        hourly rollups and percentiles are estimated from their latency buckets."""
        allowed = {"user", "key_name", "key_id", "model", "route"}
        if not set(group_by) <= allowed:
            raise InvalidInputError(f"can group by {', '.join(sorted(allowed))}")
        dim = _rollup_dim(group_by, key_id, user)
        hours = None if exact or dim is None else whole_hours(since, until)
        clauses = _usage_filter(since, until, key_id, user)
        groups: dict[tuple[Any, ...], Totals] = {}
        edges: list[Sequence[Sequence[Any]]]
        backend = self.database.backend
        async with self._read() as conn:
            if hours is None:
                rows = await _raw_summary(conn, group_by, clauses, backend)
                if exact:
                    summary = [_exact_summary(group_by, row) for row in rows if row[-10]]
                    return _sorted(summary, group_by)
                edges = [rows]
            else:
                assert dim is not None
                start, end = hours
                edges = []
                # the records of the partial hours at either end
                for edge in ((since, start), (end, until)):
                    if None not in edge and edge[0] != edge[1]:
                        where = _usage_filter(*edge, key_id, user)
                        edges.append(await _raw_summary(conn, group_by, where, backend))
                h = usage_hourly.c
                labels = [_ROLLUP_LABELS[dim][name] for name in group_by]
                sums = (cost_sum(h[c]) if c == "cost" else func.sum(h[c]) for c in SUM_COLUMNS)
                statement = select(*labels, *sums).where(*_rollup_filter(dim, hours, key_id, user))
                if labels:
                    statement = statement.group_by(*labels)
                for summed in (await conn.execute(statement)).all():
                    names = _rollup_names(dim, group_by, summed[: len(group_by)])
                    groups.setdefault(names, Totals()).add_sums(summed[len(group_by) :])
        for rows in edges:
            for row in rows:
                names = tuple(row[: len(group_by)])
                groups.setdefault(names, Totals()).add_sums(_raw_sums(row[len(group_by) :]))
        return _sorted(
            [
                {**dict(zip(group_by, names, strict=True)), **totals.summary()}
                for names, totals in groups.items()
                if totals.values[0]
            ],
            group_by,
        )


# Rows per INSERT statement: 1,600 parameters, well inside SQLite's limit of 32,766 and
# PostgreSQL's of 65,535.
ROWS_PER_INSERT = 100

# sqlite3 binds an exact int at once, but for a bool (a subclass of int) it first looks
# for an adapter, through two failing attribute lookups that cost more than the rest of a
# usage row (which holds two bools). With this it stores the same integer, directly.
sqlite3.register_adapter(bool, int)


@functools.lru_cache(maxsize=2 * ROWS_PER_INSERT)
def _insert_usage_sql(rows: int, numbered: bool) -> str:
    """INSERT of `rows` usage records; placeholders `?` (SQLite) or `$1, $2...` (asyncpg)."""
    width = len(USAGE_COLUMNS)
    if numbered:
        values = ", ".join(
            "(" + ", ".join(f"${row * width + n}" for n in range(1, width + 1)) + ")"
            for row in range(rows)
        )
    else:
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)
    columns = ", ".join(f'"{name}"' for name in USAGE_COLUMNS)  # "user" is a keyword
    return f"INSERT INTO usage ({columns}) VALUES {values}"


async def _insert_usage_rows(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Statements of ROWS_PER_INSERT rows, the records passed as they are, on the driver's
    own connection inside the transaction. Through SQLAlchemy (even exec_driver_sql) the
    same statements cost twice the CPU (8 against 4 ms for 750 rows, measured), most of it
    while the event loop waits for the GIL; built with insert(usage) SQLAlchemy also
    processed every value in Python. Not a step per row either, which traded the GIL with
    the event loop for each one."""
    driver = await driver_connection(conn)
    numbered = conn.dialect.paramstyle.startswith("numeric")  # asyncpg: $1, $2...
    for start in range(0, len(records), ROWS_PER_INSERT):
        rows = records[start : start + ROWS_PER_INSERT]
        values: list[object] = []
        for row in rows:  # (a row's values copied in C; chain() stepped through each)
            values += row
        sql = _insert_usage_sql(len(rows), numbered)
        if numbered:
            await driver.execute(sql, *values)
        else:
            await driver.execute(sql, values)


async def _add_to_rollups(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Add the records to their hourly rollup rows, in the transaction that writes them."""
    rows = rollup_rows(records)
    if not rows:
        return
    driver = await driver_connection(conn)
    numbered = conn.dialect.paramstyle.startswith("numeric")
    await driver.executemany(upsert_sql(numbered), rows)


# Tokens of records decided locally (LocalUsageRecord) onto their keys' day counts, one
# row per key ($1 keys in ascending order, $2 the latest day of each key's records, $3
# that day's tokens): a newer day starts the row's day, an older one is past.
_SHARE_TOKENS = f"""
INSERT INTO limit_counters AS l (key_id, minute_start, minute_used, hour_start, hour_used,
    day_start, day_tokens, day_reserved, in_flight)
SELECT r.k, 0, 0, 0, 0, r.d, r.t, 0, 0
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS r(k, d, t) ORDER BY r.k
ON CONFLICT (key_id) DO UPDATE SET
    day_tokens = CASE WHEN excluded.day_start > l.day_start THEN excluded.day_tokens
        WHEN excluded.day_start = l.day_start THEN least(l.day_tokens + excluded.day_tokens,
            {MAX_INT})
        ELSE l.day_tokens END,
    day_start = greatest(l.day_start, excluded.day_start)
"""
# Their costs onto the budgets they count against (the key's and its user's), those of
# the row's period only ($1 keys, $2 times, $3 costs); the rows locked first, in the order
# every function of the schema locks them. A budget with no row yet is made from the
# usage table, which holds them already.
_SHARE_COSTS = f"""
WITH r AS (SELECT * FROM unnest($1::bigint[], $2::float8[], $3::bigint[]) AS r(k, ts, c)),
o AS (
    SELECT 'key:' || r.k AS owner, r.ts, r.c FROM r
    UNION ALL
    SELECT 'user:' || keys.user_id, r.ts, r.c FROM r JOIN keys ON keys.id = r.k
    WHERE keys.user_id IS NOT NULL
),
locked AS (
    SELECT b.owner, b.period_start FROM budget_spend AS b
    WHERE b.owner IN (SELECT owner FROM o) ORDER BY b.owner COLLATE "C" FOR UPDATE
),
s AS (
    SELECT locked.owner, sum(o.c) AS cost FROM o JOIN locked
        ON locked.owner = o.owner AND o.ts >= locked.period_start
    GROUP BY locked.owner
)
UPDATE budget_spend AS b SET spent = least(b.spent + s.cost, {MAX_SUM_NANO})
FROM s WHERE b.owner = s.owner
"""


async def _share_counts(conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
    """Bring the tokens and costs of records decided on a gateway's own reckoning to the
    shared rows, in the transaction that inserts them: once, however often replayed."""
    local = [r for r in records if r.__class__ is LocalUsageRecord]
    if not local:
        return
    days: dict[int, tuple[int, int]] = {}  # key -> (its latest day, that day's tokens)
    for r in local:
        tokens = (r.prompt_tokens or 0) + (r.completion_tokens or 0)
        day = int(r.ts // DAY * DAY)
        latest = days.get(r.key_id)
        if latest is None or day > latest[0]:
            days[r.key_id] = (day, tokens)
        elif day == latest[0]:
            days[r.key_id] = (day, latest[1] + tokens)
    driver = await driver_connection(conn)
    key_ids = sorted(days)
    await driver.execute(
        _SHARE_TOKENS,
        key_ids,
        [days[k][0] for k in key_ids],
        [days[k][1] for k in key_ids],
    )
    costly = [r for r in local if r.cost]
    if costly:
        await driver.execute(
            _SHARE_COSTS,
            [r.key_id for r in costly],
            [r.ts for r in costly],
            [r.cost for r in costly],
        )


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
        *_USER_BUDGET_COLUMNS,
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
    )


def _key_select() -> Any:
    """Keys with their user's disabled flag (a key row written before users existed, or
    by hand, may have no user record: it counts as not disabled)."""
    return select(*_KEY_COLUMNS, users.c.disabled, *_USER_BUDGET_COLUMNS).select_from(
        keys.outerjoin(users, users.c.id == keys.c.user_id)
    )


async def _user_for_new_key(conn: AsyncConnection, name: str) -> int:
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


async def _claim_segment(conn: AsyncConnection, segment: str) -> bool:
    """Note in the transaction that `segment`'s records are written; False when they
    were before. One statement (a look and an insert were two; this runs at every
    flush): on SQLite on the driver's connection, as for the records, since through
    SQLAlchemy each statement is three calls into aiosqlite's thread; on PostgreSQL
    through SQLAlchemy, whose first statement is what begins the transaction there."""
    if conn.dialect.name == "sqlite":
        driver = await driver_connection(conn)
        cursor = await driver.execute(
            "INSERT INTO usage_segments (name, written_at) VALUES (?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (segment, time.time()),
        )
        return bool(cursor.rowcount == 1)
    claim = pg_insert(usage_segments).values(name=segment, written_at=time.time())
    result = await conn.execute(claim.on_conflict_do_nothing())
    return bool(result.rowcount == 1)


async def _segment_exists(conn: AsyncConnection, segment: str) -> bool:
    found = await conn.execute(
        select(usage_segments.c.name).where(usage_segments.c.name == segment)
    )
    return found.first() is not None


async def _end_sessions_of(conn: AsyncConnection, key_ids: Sequence[int]) -> None:
    """End the dashboard sessions of keys that stop working for good (revoked, purged)."""
    await conn.execute(delete(sessions).where(sessions.c.key_id.in_(key_ids)))


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
    joined = len(row) > 20
    user, name = str(row[1]), str(row[2])
    user_id = row[16] if isinstance(row[16], int) else None
    budget = read_budget(row[17:20])
    user_budget = read_budget(row[21:24]) if joined else None
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
        user_disabled=joined and bool(row[20]),
        user_id=user_id,
        budget=budget,
        user_budget=user_budget,
        budgets=budget_lines(row[0], user, name, user_id, budget, user_budget),
    )


def _usage_filter(
    since: float | None, until: float | None, key_id: int | None, user: str | None = None
) -> list[Any]:
    clauses = []
    if user is not None:
        clauses.append(usage.c.user == user)
    if since is not None:
        clauses.append(usage.c.ts >= since)
    if until is not None:
        clauses.append(usage.c.ts < until)
    if key_id is not None:
        clauses.append(usage.c.key_id == key_id)
    return clauses


def _usage_query_filter(where: UsageQuery) -> list[Any]:
    clauses = _usage_filter(where.since, where.until, where.key_id, where.user)
    if where.model is not None:
        clauses.append(usage.c.model == where.model)
    if where.route is not None:
        clauses.append(usage.c.route == where.route)
    if where.status is not None:
        clauses.append(usage.c.status == where.status)
    return clauses


def _past(after: tuple[float, int], newest_first: bool) -> Any:
    """Rows beyond (ts, id) `after` in the export's order. Written as a range on ts and
    then the tie on id, which both databases serve from the ts index."""
    ts, rid = after
    if newest_first:
        return and_(usage.c.ts <= ts, or_(usage.c.ts < ts, usage.c.id < rid))
    return and_(usage.c.ts >= ts, or_(usage.c.ts > ts, usage.c.id > rid))


def _usage_record(row: Sequence[Any]) -> UsageRecord:
    """A usage row as a record, for display. Durations are stored as measured and rounded
    to the microsecond when read back, so the request path does not pay for round(); the
    cost is shown in micro-units (rounded half up from its nano-units)."""
    record = UsageRecord(*row)
    return record._replace(
        cost=None if record.cost is None else micro(record.cost),
        duration_ms=round(record.duration_ms, 3),
        ttfb_ms=None if record.ttfb_ms is None else round(record.ttfb_ms, 3),
        client_gone=bool(record.client_gone),
        estimated=bool(record.estimated),
    )


_SERIES_FIELDS = ("requests", "tokens", "cost", "errors", "client_gone")


async def _raw_summary(
    conn: AsyncConnection, group_by: Sequence[str], clauses: list[Any], backend: str
) -> Sequence[Sequence[Any]]:
    """Usage records summed per group, read from the records: the labels, then requests,
    prompt and completion tokens, duration sum, errors, early leaves, cost, records with a
    cost, and the durations and times to first byte joined by commas (for percentiles)."""
    labels = [usage.c[name] for name in group_by]
    if backend == "sqlite":
        durations = func.group_concat(usage.c.duration_ms)
        ttfbs = func.group_concat(usage.c.ttfb_ms)  # (NULLs are left out)
    else:
        durations = func.string_agg(cast(usage.c.duration_ms, Text), ",")
        ttfbs = func.string_agg(cast(usage.c.ttfb_ms, Text), ",")
    statement = select(
        *labels,
        func.count(),
        func.sum(func.coalesce(usage.c.prompt_tokens, 0)),
        func.sum(func.coalesce(usage.c.completion_tokens, 0)),
        func.sum(usage.c.duration_ms),
        func.sum(case((usage.c.status >= 400, 1), else_=0)),
        func.sum(usage.c.client_gone),
        cost_sum(usage.c.cost),
        func.count(usage.c.cost),
        durations,
        ttfbs,
    ).where(*clauses)
    if labels:
        statement = statement.group_by(*labels)
    return (await conn.execute(statement)).all()


def _exact_summary(group_by: Sequence[str], row: Sequence[Any]) -> dict[str, object]:
    """A group of _raw_summary as a summary, with percentiles of every duration (not of
    latency buckets)."""
    measures = row[len(group_by) :]
    totals = Totals()
    totals.add_sums(_counted_sums(measures))
    joined, ttfb = measures[-2:]
    return {
        **dict(zip(group_by, row[: len(group_by)], strict=True)),
        **totals.summary((*_percentiles(joined), *_percentiles(ttfb))),
    }


def _counted_sums(measures: Sequence[Any]) -> list[float]:
    """The sums of a _raw_summary group, in SUM_COLUMNS' order, up to the histograms."""
    count, prompt, completion, duration, errors, gone, cost, costed, _, _ = measures
    return [
        count, prompt or 0, completion or 0, errors or 0, gone or 0, cost or 0, costed,
        duration or 0.0,
    ]  # fmt: skip


def _raw_sums(measures: Sequence[Any]) -> list[float]:
    """The measures of a _raw_summary group as a row of SUM_COLUMNS: the joined durations
    counted into latency buckets."""
    joined, ttfb = measures[-2:]
    sums = _counted_sums(measures)
    for values in (joined, ttfb):
        buckets = [0] * BUCKETS
        for value in values.split(",") if values else ():
            buckets[bucket(float(value))] += 1
        sums.extend(buckets)
    return sums


def _rollup_dim(group_by: Sequence[str], key_id: int | None, user: str | None) -> str | None:
    """The rollup rows that can answer a summary, if any."""
    if key_id is not None:
        return "key" if set(group_by) <= {"user", "key_name", "key_id"} else None
    if not group_by:
        return "all" if user is None else "user"
    if tuple(group_by) == ("user",):
        return "user"
    if set(group_by) <= {"user", "key_name", "key_id"}:
        return "key"
    if len(group_by) == 1 and user is None:
        return group_by[0]  # model or route
    return None


_ROLLUP_LABELS = {
    "all": {},
    "user": {"user": usage_hourly.c.value},
    "key": {
        "user": usage_hourly.c.user,
        "key_name": usage_hourly.c.key_name,
        "key_id": usage_hourly.c.value,
    },
    "model": {"model": usage_hourly.c.value},
    "route": {"route": usage_hourly.c.value},
}


def _rollup_filter(
    dim: str, hours: tuple[float | None, float | None], key_id: int | None, user: str | None
) -> list[Any]:
    """The rollup rows of dimension `dim` in `hours`, of one key or user when given (the
    key's rows name its user; the user's rows are the user)."""
    h = usage_hourly.c
    start, end = hours
    clauses = [h.dim == dim]
    if start is not None:
        clauses.append(h.hour >= start)
    if end is not None:
        clauses.append(h.hour < end)
    if key_id is not None:
        clauses.append(h.value == str(key_id))
    if user is not None:
        clauses.append(h.value == user if dim == "user" else h.user == user)
    return clauses


def _rollup_names(dim: str, group_by: Sequence[str], values: Sequence[Any]) -> tuple[Any, ...]:
    """A rollup group's labels as the records have them: key ids are numbers, and the
    model "" is a record without one."""
    names = []
    for name, value in zip(group_by, values, strict=True):
        if name == "key_id":
            value = int(value)
        elif name == "model" and value == "":
            value = None
        names.append(value)
    return tuple(names)


def _sorted(summary: list[dict[str, object]], group_by: Sequence[str]) -> list[dict[str, object]]:
    """Groups in the order of their labels, a missing one (a record without a model) last,
    the same on both databases."""

    def order(row: dict[str, object]) -> list[tuple[bool, Any]]:
        return [(row[n] is None, 0 if row[n] is None else row[n]) for n in group_by]

    return sorted(summary, key=order)


def _percentiles(joined: str | None) -> tuple[float | None, float | None]:
    """p50 and p95 of comma-joined values (nearest rank), the same way on both databases."""
    if not joined:
        return None, None
    ordered = sorted(float(d) for d in joined.split(","))
    last = len(ordered) - 1
    return (
        round(ordered[min(last, int(0.5 * len(ordered)))], 2),
        round(ordered[min(last, int(0.95 * len(ordered)))], 2),
    )
