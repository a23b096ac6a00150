"""All SQL lives here: the key table, on one aiosqlite connection per process.

The server and both CLIs open the same database through `Store.open`, so the file is
created the same way everywhere (mode 0600, WAL, migrated) and bad files are refused
with the same clear message.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

from .keys import generate_key
from .migrations import SchemaError, migrate

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_KEY_COLUMNS = (
    "id, user, name, key_hash, prefix, role, created_at, expires_at, last_used_at, revoked,"
    " revoked_at"
)


class StoreError(Exception):
    """A database problem worth one clear line to a person (never holds a key)."""


class DuplicateKeyError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class InvalidInputError(StoreError):
    pass


MAX_NAME_CHARS = 64


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
    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str, *, create: bool = True, busy_timeout_s: float = 5.0) -> Store:
        """Open (and if needed create and migrate) the key database at `path`."""
        _check_or_create_file(path, create)
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
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def data_version(self) -> int:
        """Changes whenever *another* connection commits: the cheap reload signal."""
        with _friendly_errors(self.path):
            async with self._db.execute("PRAGMA data_version") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    # --- keys -------------------------------------------------------------------------

    async def create_key(
        self, user: str, name: str, role: Role = "user", expires_at: float | None = None
    ) -> tuple[KeyRecord, str]:
        """Store a new key and return its record and the secret (shown once, never stored)."""
        check_name("user", user)
        check_name("key name", name)
        if role not in ROLES:
            raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        new = generate_key()
        now = time.time()
        with _friendly_errors(self.path):
            try:
                async with self._db.execute(
                    "INSERT INTO keys (user, name, key_hash, prefix, role, created_at, expires_at)"
                    f" VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
                    (user, name, new.key_hash, new.display_prefix, role, now, expires_at),
                ) as cur:
                    row = await cur.fetchone()
            except sqlite3.IntegrityError:
                raise DuplicateKeyError(
                    f"user {user!r} already has an active key named {name!r}"
                ) from None
        assert row is not None
        return _record(row), new.secret

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
                if not await self._exists("SELECT 1 FROM keys WHERE user = ?", (user,)):
                    raise KeyNotFoundError(f"no user {user!r}")
                raise KeyNotFoundError(f"user {user!r} has no active key named {name!r}")
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

    async def _exists(self, sql: str, params: tuple[object, ...]) -> bool:
        async with self._db.execute(sql, params) as cur:
            return await cur.fetchone() is not None


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
            raise StoreError(f"{path}: no such database")
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
    return KeyRecord(
        id=row[0],
        user=row[1],
        name=row[2],
        key_hash=row[3],
        prefix=row[4],
        role=row[5],
        created_at=row[6],
        expires_at=row[7],
        last_used_at=row[8],
        revoked=bool(row[9]),
        revoked_at=row[10],
    )
