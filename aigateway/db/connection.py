"""The connection to one database, SQLite or PostgreSQL: opening it, its read and write
transactions, the SQLite file's identity, and the database's errors as StoreError lines.

The server and both CLIs open the database through `Store.open` (a SQLite path or
DATABASE_URL), so it is created and migrated the same way everywhere (a SQLite file:
mode 0600, WAL) and bad databases are refused with the same clear line, which never
holds a password.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Self

import asyncpg
from sqlalchemy import event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..records import StoreError
from .migrate import SchemaError, is_current, upgrade
from .schema import key_changes
from .url import Database, DatabaseURLError, database_from

log = logging.getLogger("aigateway")

_SQLITE_MAGIC = b"SQLite format 3\x00"


# What the drivers raise for a batch whose values they or the database will not take
# (retrying cannot help), and for a database that is busy or away (retrying can).
DRIVER_REFUSALS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,  # a value sqlite3 cannot bind
    sqlite3.DataError,
    asyncpg.exceptions.DataError,  # also a value asyncpg cannot encode
    asyncpg.exceptions.IntegrityConstraintViolationError,
    OverflowError,
    ValueError,
    TypeError,
)
_DRIVER_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error,
    asyncpg.exceptions.PostgresError,
    asyncpg.exceptions.InterfaceError,
)
_DATABASE_ERRORS: tuple[type[Exception], ...] = (sa_exc.DBAPIError, *_DRIVER_ERRORS)


@contextmanager
def _friendly_errors(where: str) -> Iterator[None]:
    """The database's errors as StoreError lines naming the file or the URL (password
    masked), never a traceback, never the SQL or its values."""
    try:
        yield
    except SchemaError as exc:
        raise StoreError(f"{where}: {exc}") from None
    except DatabaseURLError as exc:
        raise StoreError(str(exc)) from None
    except _DATABASE_ERRORS as exc:
        text = first_line(getattr(exc, "orig", exc))
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{where}: the database is locked by another writer; try again shortly"
            ) from None
        if "not a database" in text:
            raise StoreError(f"{where}: not an aigateway database (not an SQLite file)") from None
        raise StoreError(f"{where}: {text}") from None
    except (OSError, TimeoutError) as exc:  # PostgreSQL away: refused, reset, timed out
        reason = getattr(exc, "strerror", None) or first_line(exc) or type(exc).__name__
        raise StoreError(f"{where}: cannot reach the database: {reason}") from None
    except sa_exc.SQLAlchemyError as exc:
        raise StoreError(f"{where}: {type(exc).__name__}: {first_line(exc)}") from None


def first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


class Connector:
    """An open database: its engine, its read and write transactions, and the identity of
    its file. Store (store.py) is this and one class of queries per table."""

    def __init__(self, database: Database, engine: AsyncEngine, busy_timeout_s: float) -> None:
        self.database = database
        # What errors and logs name as "the database": the SQLite file, or the URL with
        # its password masked.
        self.path = database.display
        self._engine = engine
        self._busy_timeout_s = busy_timeout_s
        self._identity = _identity(database.path) if database.backend == "sqlite" else None
        self.generation = 0  # goes up when a replaced database file is reopened

    @classmethod
    async def open(
        cls, target: str | Database, *, create: bool = True, busy_timeout_s: float = 5.0
    ) -> Self:
        """Open (and if needed create and migrate) the database: a SQLite path, or a
        DATABASE_URL (sqlite:///path, postgresql://user:password@host:port/db)."""
        try:
            database = target if isinstance(target, Database) else database_from(target)
        except DatabaseURLError as exc:
            raise StoreError(str(exc)) from None
        if database.backend == "sqlite":
            _check_or_create_file(database.path, create)
        engine = await _connect(database, busy_timeout_s)
        return cls(database, engine, busy_timeout_s)

    async def close(self) -> None:
        await self._engine.dispose()

    async def check_file(self) -> None:
        """Make sure writes go to the file at `path` (SQLite): a database file deleted under
        the running server raises StoreError (writes would go to a file nobody can open);
        one replaced by another (a backup restored) is reopened."""
        if self.database.backend != "sqlite":
            return
        path = self.database.path
        try:
            identity = _identity(path)
        except OSError:
            raise StoreError(
                f"{path}: the database file is gone (deleted while the gateway runs);"
                " restore it or restart the gateway"
            ) from None
        if identity == self._identity:
            return
        _check_or_create_file(path, create=False)
        replacement = await _connect(self.database, self._busy_timeout_s)
        old, self._engine = self._engine, replacement
        self._identity = identity
        self.generation += 1
        await old.dispose()
        log.warning("%s: the database file was replaced; the gateway now uses the new one", path)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with _friendly_errors(self.path):
            async with self._engine.connect() as conn, conn.begin():
                yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite it takes the write lock at BEGIN (IMMEDIATE), so
        it waits for another writer instead of failing half-way."""
        with _friendly_errors(self.path):
            async with self._engine.connect() as conn:
                await conn.execution_options(aigateway_write=True)
                async with conn.begin():
                    yield conn

    async def data_version(self) -> int:
        """Changes whenever keys may have changed elsewhere: the cheap reload signal.
        SQLite: PRAGMA data_version (moves when *another* connection commits, hand edits
        too). PostgreSQL: key_changes.version, which every key write moves."""
        if self.database.backend == "sqlite":
            # Asked four times a second: straight to the driver, one call into its thread
            # (through SQLAlchemy, a transaction and cursors made it nine, each a trip
            # between threads and a tussle for the GIL with the relay).
            with _friendly_errors(self.path):
                async with self._engine.connect() as conn:
                    driver = await driver_connection(conn)
                    rows = await driver.execute_fetchall("PRAGMA data_version")
            return int(rows[0][0])
        async with self._read() as conn:
            value = (await conn.execute(select(key_changes.c.version))).scalar()
        return int(value or 0)


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection (aiosqlite's or asyncpg's) under `conn`, inside its
    transaction: for the statements run at every flush or poll, where SQLAlchemy's
    cursors would cost calls into aiosqlite's thread."""
    return (await conn.get_raw_connection()).driver_connection


async def _connect(database: Database, busy_timeout_s: float) -> AsyncEngine:
    """An engine for `database`, migrated to this release's schema."""
    if database.backend == "sqlite":
        # One connection, as before: SQLite has one writer at a time anyway, and PRAGMA
        # data_version is per connection.
        engine = create_async_engine(database.url, pool_size=1, max_overflow=0)
        _sqlite_setup(engine, busy_timeout_s)
    else:
        engine = create_async_engine(
            database.url,
            pool_size=5,
            pool_pre_ping=True,  # a connection PostgreSQL dropped is replaced, not used
            connect_args={"timeout": busy_timeout_s, "command_timeout": 30},
        )
    try:
        with _friendly_errors(database.display):
            async with engine.connect() as conn:
                async with conn.begin():
                    current = await conn.run_sync(is_current)
                if not current:
                    await conn.execution_options(aigateway_write=True)
                    async with conn.begin():
                        await conn.run_sync(upgrade)
    except BaseException:
        await engine.dispose()
        raise
    return engine


def _sqlite_setup(engine: AsyncEngine, busy_timeout_s: float) -> None:
    """SQLite's settings on every new connection, and transactions begun by us: pysqlite's
    own handling would not wrap DDL, and a write should wait for the lock at BEGIN."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("aigateway_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _make_folders(path: str, folder: Path) -> None:
    """Create `folder` and each missing folder above it, each with mode 0700 (it will
    hold the keys' hashes and the usage), as `sqlite:///./data/x.db` on a fresh clone
    needs; a folder that exists is left as it is."""
    missing = [f for f in (folder, *folder.parents) if not f.is_dir()]
    for each in reversed(missing):
        try:
            os.mkdir(each, 0o700)
        except FileExistsError:
            if not each.is_dir():
                raise StoreError(f"{path}: {str(each)!r} is not a folder") from None
            continue  # another process made it meanwhile: theirs, left as it is
        except OSError as exc:
            raise StoreError(
                f"{path}: cannot create the folder {str(each)!r}: {exc.strerror}"
            ) from None
        os.chmod(each, 0o700)  # whatever the umask took away


def _check_or_create_file(path: str, create: bool) -> None:
    """Refuse what cannot be our database; create a missing one readable by its owner
    only, before SQLite touches it (SQLite gives the -wal and -shm files the same mode),
    and its missing folders too."""
    file = Path(path)
    if file.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file")
    if not file.exists():
        if not create:
            raise StoreError(
                f"{path}: no such database (the server or the first key made creates it)"
            )
        _make_folders(path, file.parent)
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
