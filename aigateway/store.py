"""All SQL lives here: the key table, on one aiosqlite connection per process.

The server and both CLIs open the same database through `Store.open`, so the file is
created the same way everywhere (mode 0600, WAL, migrated) and bad files are refused
with the same clear message.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import aiosqlite
import orjson

from .keys import generate_key
from .migrations import SchemaError, migrate

log = logging.getLogger("aigateway")
Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_KEY_COLUMNS = (
    "id, user, name, key_hash, prefix, role, created_at, expires_at, last_used_at, revoked,"
    " revoked_at, rpm, rph, tokens_per_day, max_concurrent, models"
)
LIMIT_FIELDS = ("rpm", "rph", "tokens_per_day", "max_concurrent")
MAX_LIMIT = 10**12
MAX_MODEL_PATTERNS = 100


class StoreError(Exception):
    """A database problem worth one clear line to a person (never holds a key)."""


class DuplicateKeyError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class InvalidInputError(StoreError):
    pass


class UsageRejected(Exception):
    """The database refused a batch of usage records for a value in one of them (not
    because it is busy or away): retrying the same batch cannot help."""


MAX_NAME_CHARS = 64
MAX_EXPIRES_AT = 253402300800.0  # 10000-01-01T00:00:00Z: every time before it can be shown


def check_expiry(expires_at: object) -> float | None:
    """None (never), or a finite Unix time before the year 10000."""
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise InvalidInputError("expires_at must be a Unix time or null")
    if not 0 <= expires_at < MAX_EXPIRES_AT:  # also refuses NaN
        raise InvalidInputError("expires_at must be a Unix time before the year 10000")
    return float(expires_at)


def check_limits(limits: KeyLimits) -> KeyLimits:
    for field in LIMIT_FIELDS:
        value = getattr(limits, field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{field} must be a whole number, not {value!r}")
        if not 0 <= value <= MAX_LIMIT:
            raise InvalidInputError(f"{field} must be 0 (no limit) or more, not {value}")
    return limits


def check_models(models: Sequence[str] | None) -> tuple[str, ...] | None:
    """Model patterns such as `llama3*` or `qwen2.5:0.5b`; None allows every model. An
    empty list is refused: read as "every model" it would open what it means to close."""
    if models is None:
        return None
    if (
        isinstance(models, str)
        or not isinstance(models, list | tuple)
        or not all(isinstance(m, str) for m in models)
    ):
        raise InvalidInputError("models must be a list of model names or patterns")
    cleaned = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    if not cleaned:
        raise InvalidInputError(
            "models must name at least one model or pattern (null, or 'all' in the CLIs,"
            " allows every model)"
        )
    if len(cleaned) > MAX_MODEL_PATTERNS:
        raise InvalidInputError(f"at most {MAX_MODEL_PATTERNS} model patterns")
    for pattern in cleaned:
        if len(pattern) > 200 or not pattern.isprintable() or " " in pattern:
            raise InvalidInputError(f"not a model name or pattern: {pattern!r}")
    return cleaned


def check_name(what: str, value: str) -> str:
    """User and key names: 1 to 64 printable characters, no surrounding blanks."""
    if not value or not value.strip():
        raise InvalidInputError(f"{what} must not be empty")
    if value != value.strip():
        raise InvalidInputError(f"{what} must not start or end with blanks")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInputError(f"{what} must be at most {MAX_NAME_CHARS} characters")
    if not value.isprintable():
        raise InvalidInputError(f"{what} must not contain control characters")
    return value


class UsageRecord(NamedTuple):
    """One relayed request. Tokens are None when Ollama reported no counts.
    A tuple, so a batch goes to SQLite as it is, without copying field by field."""

    ts: float
    key_id: int
    user: str
    key_name: str
    method: str
    route: str
    model: str | None
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    duration_ms: float
    ttfb_ms: float | None
    bytes_in: int
    bytes_out: int
    client_gone: bool
    # The counts were counted or estimated by the gateway (a stream cut before its
    # final counts), not reported by the upstream.
    estimated: bool = False


USAGE_COLUMNS = UsageRecord._fields
_MAX_INT = 2**63 - 1  # SQLite's INTEGER
_MAX_TEXT = 1024


def clean_usage_record(record: UsageRecord) -> UsageRecord:
    """A record whose every value the database takes: whole numbers within 64 bits and
    not negative, finite times, bounded text. Raises TypeError or ValueError for one that
    cannot be made so (a journal line edited by hand, or torn)."""

    def count(value: object, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected a whole number, got {value!r}")
        return min(max(value, 0), _MAX_INT)

    def seconds(value: object, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)

    def text(value: object, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {value!r}")
        return value[:_MAX_TEXT]

    return UsageRecord(
        seconds(record.ts),  # type: ignore[arg-type]
        count(record.key_id),  # type: ignore[arg-type]
        text(record.user),  # type: ignore[arg-type]
        text(record.key_name),  # type: ignore[arg-type]
        text(record.method),  # type: ignore[arg-type]
        text(record.route),  # type: ignore[arg-type]
        text(record.model, optional=True),
        count(record.status),  # type: ignore[arg-type]
        count(record.prompt_tokens, optional=True),
        count(record.completion_tokens, optional=True),
        seconds(record.duration_ms),  # type: ignore[arg-type]
        seconds(record.ttfb_ms, optional=True),
        count(record.bytes_in),  # type: ignore[arg-type]
        count(record.bytes_out),  # type: ignore[arg-type]
        bool(record.client_gone),
        bool(record.estimated),
    )


# Durations are stored as measured and rounded to the microsecond when read back, so the
# request path does not pay for round().
_USAGE_SELECT = ", ".join(
    f"ROUND({name}, 3)" if name in ("duration_ms", "ttfb_ms") else name for name in USAGE_COLUMNS
)
# Rows per INSERT statement: 1,500 parameters, well inside SQLite's limit of 32,766.
ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_usage_sql(rows: int) -> str:
    row = "(" + ", ".join("?" for _ in USAGE_COLUMNS) + ")"
    return f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES " + ", ".join([row] * rows)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key limits; None means "the gateway's default", 0 means "no limit"."""

    rpm: int | None = None
    rph: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    user: str
    name: str
    key_hash: str
    prefix: str
    role: Role
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked: bool
    revoked_at: float | None
    limits: KeyLimits = KeyLimits()
    models: tuple[str, ...] | None = None  # allow-list patterns; None: every model

    def status(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"


@contextmanager
def _friendly_errors(path: str) -> Iterator[None]:
    """Turn sqlite3's errors into StoreError lines that name the file, not a traceback."""
    try:
        yield
    except SchemaError as exc:
        raise StoreError(f"{path}: {exc}") from None
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{path}: the database is locked by another writer; try again shortly"
            ) from None
        raise StoreError(f"{path}: {text}") from None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path}: not an aigateway database (not an SQLite file)") from None
        raise StoreError(f"{path}: {exc}") from None


class Store:
    def __init__(self, db: aiosqlite.Connection, path: str, busy_timeout_s: float) -> None:
        self._db = db
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._identity = _identity(path)
        self.generation = 0  # goes up when a replaced database file is reopened

    @classmethod
    async def open(cls, path: str, *, create: bool = True, busy_timeout_s: float = 5.0) -> Store:
        """Open (and if needed create and migrate) the key database at `path`."""
        _check_or_create_file(path, create)
        return cls(await _connect(path, busy_timeout_s), path, busy_timeout_s)

    async def close(self) -> None:
        await self._db.close()

    async def check_file(self) -> None:
        """Make sure writes go to the file at `path`: a database file deleted under the
        running server raises StoreError (writes would go to a file nobody can open); one
        replaced by another (a backup restored) is reopened."""
        try:
            identity = _identity(self.path)
        except OSError:
            raise StoreError(
                f"{self.path}: the database file is gone (deleted while the gateway runs);"
                " restore it or restart the gateway"
            ) from None
        if identity == self._identity:
            return
        _check_or_create_file(self.path, create=False)
        replacement = await _connect(self.path, self._busy_timeout_s)
        old, self._db = self._db, replacement
        self._identity = identity
        self.generation += 1
        await old.close()
        log.warning(
            "%s: the database file was replaced; the gateway now uses the new one", self.path
        )

    async def data_version(self) -> int:
        """Changes whenever *another* connection commits: the cheap reload signal."""
        with _friendly_errors(self.path):
            async with self._db.execute("PRAGMA data_version") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

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
        patterns = check_models(models)
        new = generate_key()
        now = time.time()
        with _friendly_errors(self.path):
            try:
                async with self._db.execute(
                    "INSERT INTO keys (user, name, key_hash, prefix, role, created_at, expires_at,"
                    " rpm, rph, tokens_per_day, max_concurrent, models)"
                    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
                    (
                        user,
                        name,
                        new.key_hash,
                        new.display_prefix,
                        role,
                        now,
                        expires_at,
                        limits.rpm,
                        limits.rph,
                        limits.tokens_per_day,
                        limits.max_concurrent,
                        _models_json(patterns),
                    ),
                ) as cur:
                    row = await cur.fetchone()
            except sqlite3.IntegrityError:
                raise DuplicateKeyError(
                    f"user {user!r} already has an active key named {name!r}"
                ) from None
        assert row is not None
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
                values[field] = _models_json(check_models(value))  # type: ignore[arg-type]
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
        assignments = ", ".join(f"{field} = ?" for field in values)
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"UPDATE keys SET {assignments} WHERE id = ? RETURNING {_KEY_COLUMNS}",
                (*values.values(), key_id),
            ) as cur:
                row = await cur.fetchone()
        assert row is not None
        return _record(row)

    async def get_key(self, key_id: int) -> KeyRecord:
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            raise KeyNotFoundError(f"no key with id {key_id}")
        return _record(row)

    async def find_active_key(self, user: str, name: str) -> KeyRecord:
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE user = ? AND name = ? AND revoked = 0",
                (user, name),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise await self._no_active_key(user, name)
        return _record(row)

    async def revoke_key_id(self, key_id: int) -> KeyRecord:
        record = await self.get_key(key_id)
        if record.revoked:
            return record
        return await self.revoke_key(record.user, record.name)

    async def revoke_key(self, user: str, name: str) -> KeyRecord:
        """Mark the active key `user`/`name` revoked; the row stays for history."""
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"UPDATE keys SET revoked = 1, revoked_at = ? WHERE user = ? AND name = ?"
                f" AND revoked = 0 RETURNING {_KEY_COLUMNS}",
                (time.time(), user, name),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise await self._no_active_key(user, name)
        return _record(row)

    async def purge_revoked(self, user: str, name: str) -> int:
        """Delete the revoked rows of `user`/`name` for good; return how many went."""
        with _friendly_errors(self.path):
            async with self._db.execute(
                "DELETE FROM keys WHERE user = ? AND name = ? AND revoked = 1", (user, name)
            ) as cur:
                purged = cur.rowcount
            if purged == 0:
                if await self._exists(
                    "SELECT 1 FROM keys WHERE user = ? AND name = ? AND revoked = 0", (user, name)
                ):
                    raise KeyNotFoundError(
                        f"the key {user}/{name} is active: revoke it first (-d), then purge"
                    )
                raise KeyNotFoundError(f"user {user!r} has no revoked key named {name!r}")
        return purged

    async def list_keys(self) -> list[KeyRecord]:
        with _friendly_errors(self.path):
            async with self._db.execute(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY id") as cur:
                rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def record_last_used(self, used: Mapping[int, float]) -> None:
        """Write a batch of `key id -> last use time`; never moves a time backwards."""
        if not used:
            return
        with _friendly_errors(self.path):
            await self._db.executemany(
                "UPDATE keys SET last_used_at = ?1 WHERE id = ?2"
                " AND (last_used_at IS NULL OR last_used_at < ?1)",
                [(when, key_id) for key_id, when in used.items()],
            )

    # --- usage ------------------------------------------------------------------------

    async def insert_usage(
        self, records: Sequence[UsageRecord], segment: str | None = None
    ) -> None:
        """Insert a batch in one transaction, ROWS_PER_INSERT rows a statement.

        Not executemany: it steps SQLite once a row, letting go of the GIL and taking it
        back each time, so under load the writer thread and the event loop traded the
        GIL hundreds of times a batch (5 futex calls a request, seen with strace). One
        statement of many rows binds them at once and steps once."""
        if not records and segment is None:
            return
        with _friendly_errors(self.path):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                if segment is not None:  # the journal segment these come from: written
                    await self._db.execute(
                        "INSERT INTO usage_segments (name, written_at) VALUES (?, ?)",
                        (segment, time.time()),
                    )
                for start in range(0, len(records), ROWS_PER_INSERT):
                    rows = records[start : start + ROWS_PER_INSERT]
                    await self._db.execute(
                        _insert_usage_sql(len(rows)), [value for row in rows for value in row]
                    )
                await self._db.execute("COMMIT")
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, OverflowError) as exc:
                await self._db.execute("ROLLBACK")
                raise UsageRejected(str(exc)) from None
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def segment_written(self, segment: str) -> bool:
        """Whether the journal segment `segment` is in the database already."""
        with _friendly_errors(self.path):
            return await self._exists("SELECT 1 FROM usage_segments WHERE name = ?", (segment,))

    async def forget_segments(self, before: float) -> None:
        """Drop the names of segments written before `before` (their files are gone)."""
        with _friendly_errors(self.path):
            await self._db.execute("DELETE FROM usage_segments WHERE written_at < ?", (before,))

    async def tokens_since(self, since: float) -> dict[int, int]:
        """Prompt + completion tokens per key id since `since` (for daily quotas)."""
        with _friendly_errors(self.path):
            async with self._db.execute(
                "SELECT key_id, SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
                " FROM usage WHERE ts >= ? GROUP BY key_id",
                (since,),
            ) as cur:
                rows = await cur.fetchall()
        return {int(row[0]): int(row[1] or 0) for row in rows}

    async def prune_usage(self, before: float) -> int:
        with _friendly_errors(self.path):
            async with self._db.execute("DELETE FROM usage WHERE ts < ?", (before,)) as cur:
                return cur.rowcount

    async def usage_rows(
        self, since: float | None = None, until: float | None = None, key_id: int | None = None
    ) -> list[UsageRecord]:
        where, params = _usage_filter(since, until, key_id)
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"SELECT {_USAGE_SELECT} FROM usage{where} ORDER BY ts, id", params
            ) as cur:
                rows = await cur.fetchall()
        return [
            UsageRecord(*row)._replace(client_gone=bool(row[-2]), estimated=bool(row[-1]))
            for row in rows
        ]

    async def usage_summary(
        self,
        group_by: Sequence[str],
        since: float | None = None,
        until: float | None = None,
        key_id: int | None = None,
    ) -> list[dict[str, object]]:
        """Requests, tokens and durations grouped by any of user, key_name, key_id, model,
        route; p95 is computed here because SQLite has no percentile function."""
        allowed = {"user", "key_name", "key_id", "model", "route"}
        if not set(group_by) <= allowed:
            raise InvalidInputError(f"can group by {', '.join(sorted(allowed))}")
        where, params = _usage_filter(since, until, key_id)
        keys = ", ".join(group_by)
        select_keys = f"{keys}, " if group_by else ""
        with _friendly_errors(self.path):
            async with self._db.execute(
                f"SELECT {select_keys}COUNT(*), SUM(COALESCE(prompt_tokens, 0)),"
                " SUM(COALESCE(completion_tokens, 0)), AVG(duration_ms),"
                " SUM(status >= 400), SUM(client_gone), GROUP_CONCAT(duration_ms)"
                f" FROM usage{where}" + (f" GROUP BY {keys} ORDER BY {keys}" if group_by else ""),
                params,
            ) as cur:
                rows = await cur.fetchall()
        summary = []
        for row in rows:
            labels = dict(zip(group_by, row[: len(group_by)], strict=True))
            count, prompt, completion, avg, errors, gone, durations = row[len(group_by) :]
            if not count:
                continue
            summary.append(
                {
                    **labels,
                    "requests": count,
                    "prompt_tokens": prompt or 0,
                    "completion_tokens": completion or 0,
                    "total_tokens": (prompt or 0) + (completion or 0),
                    "avg_ms": round(avg, 2),
                    "p95_ms": _p95(durations),
                    "errors": errors or 0,
                    "client_gone": gone or 0,
                }
            )
        return summary

    async def _no_active_key(self, user: str, name: str) -> KeyNotFoundError:
        """Why `user`/`name` names no active key: no such user, or no such key."""
        if not await self._exists("SELECT 1 FROM keys WHERE user = ?", (user,)):
            return KeyNotFoundError(f"no user {user!r}")
        return KeyNotFoundError(f"user {user!r} has no active key named {name!r}")

    async def _exists(self, sql: str, params: tuple[object, ...]) -> bool:
        async with self._db.execute(sql, params) as cur:
            return await cur.fetchone() is not None


async def _connect(path: str, busy_timeout_s: float) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        with _friendly_errors(path):
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _check_or_create_file(path: str, create: bool) -> None:
    """Refuse what cannot be our database; create a missing one readable by its owner
    only, before SQLite touches it (SQLite gives the -wal and -shm files the same mode)."""
    file = Path(path)
    if not file.parent.is_dir():
        raise StoreError(f"{path}: the folder {str(file.parent)!r} does not exist")
    if file.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file")
    if not file.exists():
        if not create:
            raise StoreError(
                f"{path}: no such database (the server or the first key made creates it)"
            )
        try:
            os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass  # another process created it meanwhile
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the database: {exc.strerror}") from None
        return
    with file.open("rb") as fh:
        header = fh.read(len(_SQLITE_MAGIC))
    if header and header != _SQLITE_MAGIC:
        raise StoreError(f"{path}: not an aigateway database (not an SQLite file)")


def _record(row: sqlite3.Row) -> KeyRecord:
    """A key row as a record, whatever an older version or a hand edit left in it: a
    value that cannot be what its column means is read as the safest thing it could be
    (no time, no limit of its own, no model allowed), never as an error for the listing."""
    return KeyRecord(
        id=row[0],
        user=str(row[1]),
        name=str(row[2]),
        key_hash=str(row[3]),
        prefix=str(row[4]),
        role=row[5] if row[5] in ROLES else "user",
        created_at=_time(row[6]) or 0.0,
        expires_at=None if row[7] is None else _time(row[7]) or 0.0,  # unreadable: expired
        last_used_at=_time(row[8]),
        revoked=bool(row[9]),
        revoked_at=_time(row[10]),
        limits=KeyLimits(*(_limit(value) for value in row[11:15])),
        models=_models(row[15]),
    )


def _time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(min(max(value, 0), MAX_EXPIRES_AT - 1))
    return None


def _limit(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LIMIT:
        return value
    return None


def _models(value: object) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    try:
        patterns = orjson.loads(value) if isinstance(value, str | bytes) else None
    except orjson.JSONDecodeError:
        patterns = None
    if not isinstance(patterns, list):
        return ()  # unreadable: no model, never every model
    return tuple(p for p in patterns if isinstance(p, str))


def _usage_filter(
    since: float | None, until: float | None, key_id: int | None
) -> tuple[str, tuple[object, ...]]:
    clauses, params = [], []
    for clause, value in (("ts >= ?", since), ("ts < ?", until), ("key_id = ?", key_id)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _p95(durations: str | None) -> float | None:
    if not durations:
        return None
    ordered = sorted(float(d) for d in durations.split(","))
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)


def _models_json(models: tuple[str, ...] | None) -> str | None:
    return orjson.dumps(list(models)).decode() if models else None
