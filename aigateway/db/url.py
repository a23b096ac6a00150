"""Where the data lives: DATABASE_URL, or a SQLite file path, read into one shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

Backend = Literal["sqlite", "postgresql"]


class DatabaseURLError(ValueError):
    """DATABASE_URL is not one this gateway can use; the message masks the password."""


@dataclass(frozen=True)
class Database:
    backend: Backend
    url: URL  # with the async driver (sqlite+aiosqlite, postgresql+asyncpg)
    path: str = ""  # the SQLite file ("" for PostgreSQL)

    @property
    def display(self) -> str:
        """For logs, errors and /health: the file, or the URL with its password masked."""
        if self.backend == "sqlite":
            return self.path
        return self.url.set(drivername="postgresql").render_as_string(hide_password=True)


def database_from(target: str) -> Database:
    """`target` is `sqlite:///path`, `postgresql://user:pass@host:port/db` (also with
    `+asyncpg`, or `postgres://`), or else a SQLite file path."""
    text = target.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not scheme:
        return Database("sqlite", URL.create("sqlite+aiosqlite", database=text), text)
    try:
        url = make_url(text)
    except ArgumentError:
        raise DatabaseURLError(f"DATABASE_URL {_masked(text)!r} is not a database URL") from None
    driver = url.drivername.lower()
    if driver in ("sqlite", "sqlite+aiosqlite"):
        path = url.database or ""
        if not path or path == ":memory:":
            raise DatabaseURLError(
                "DATABASE_URL sqlite:/// needs a file path (sqlite:///tokens.db,"
                " sqlite:////var/lib/aigateway/tokens.db)"
            )
        return Database("sqlite", url.set(drivername="sqlite+aiosqlite"), path)
    if driver in ("postgresql", "postgres", "postgresql+asyncpg"):
        if not url.database:
            raise DatabaseURLError(
                f"DATABASE_URL {_masked(text)!r} names no database"
                " (postgresql://user:password@host:5432/aigateway)"
            )
        return Database("postgresql", url.set(drivername="postgresql+asyncpg"))
    raise DatabaseURLError(
        f"DATABASE_URL {_masked(text)!r}: use sqlite:///path or"
        " postgresql://user:password@host:port/database"
    )


def sqlite_in(folder: Path, target: str) -> str:
    """`target` with a relative SQLite path made relative to `folder` rather than the
    current folder (`sqlite:///./data/x.db` -> `sqlite:////srv/gw/data/x.db`); any other
    target, or one that is no URL at all (the setting's check says so), as it is."""
    try:
        database = database_from(target)
    except DatabaseURLError:
        return target
    if database.backend != "sqlite" or Path(database.path).is_absolute():
        return target
    path = str(folder / database.path)
    if "://" not in target:
        return path
    return make_url(target.strip()).set(database=path).render_as_string(hide_password=False)


def _masked(text: str) -> str:
    """A URL with whatever sits between `user:` and `@` replaced, parsed or not."""
    head, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in credentials else text
