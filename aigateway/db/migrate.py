"""Bring a database to this release's schema with Alembic, in one transaction.

Alembic's revisions 0001-0003 are the three numbered migrations of the SQLite-only
releases, so a file they made (its `PRAGMA user_version` says how far it got) is stamped
with the matching revision and upgraded from there, losing nothing. A database whose
revision this release does not know was made by a newer one: refused, never downgraded.
On SQLite, `PRAGMA application_id` marks an aigateway file and `user_version` mirrors
the revision, so tools can read both cheaply.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

APPLICATION_ID = 0x41494757  # "AIGW"
SCRIPTS = Path(__file__).parent / "migrations"
# PRAGMA user_version of a file the SQLite-only releases made -> its Alembic revision.
LEGACY_REVISIONS = {1: "0001", 2: "0002", 3: "0003"}
# Every instance takes this lock to migrate, so two that start together take turns.
PG_MIGRATION_LOCK = APPLICATION_ID


class SchemaError(Exception):
    """The database is not an aigateway database this release can use."""


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(SCRIPTS)).get_current_head()
    assert head is not None
    return head


def upgrade(connection: Connection) -> list[str]:
    """Migrate inside the caller's transaction; return the revisions applied."""
    config = _config(connection)
    script = ScriptDirectory.from_config(config)
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _adopt_sqlite_file(connection, config)
    else:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_MIGRATION_LOCK})
    current = MigrationContext.configure(connection).get_current_revision()
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaError(
            f"its schema (revision {current}) was made by a newer aigateway than this one"
            f" (which knows up to {script.get_current_head()}); upgrade aigateway,"
            " the gateway never downgrades a database"
        )
    pending = [
        revision.revision
        for revision in script.iterate_revisions("head", current)
        if revision.revision != current
    ]
    if pending:
        command.upgrade(config, "head")
    if sqlite:
        connection.exec_driver_sql(f"PRAGMA user_version = {int(script.get_current_head() or 0)}")
    return list(reversed(pending))


def _adopt_sqlite_file(connection: Connection, config: Config) -> None:
    """Refuse a SQLite file that is not ours; mark a new one; stamp one made by the
    SQLite-only releases with the revision its migrations reached."""
    app_id = _pragma(connection, "application_id")
    version = _pragma(connection, "user_version")
    tables = {
        row[0]
        for row in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if app_id != APPLICATION_ID:
        if app_id != 0 or version != 0 or tables:
            raise SchemaError("it is an SQLite file, but not an aigateway database")
        connection.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
        return
    if version > SCHEMA_VERSION or (
        version and version not in LEGACY_REVISIONS and "alembic_version" not in tables
    ):
        raise SchemaError(
            f"its schema version {version} is newer than this aigateway understands;"
            " upgrade aigateway"
        )
    if "alembic_version" not in tables and version:
        command.stamp(config, LEGACY_REVISIONS[version])


def _pragma(connection: Connection, name: str) -> int:
    row = connection.exec_driver_sql(f"PRAGMA {name}").fetchone()
    return int(row[0]) if row else 0


# The head revision as a number: PRAGMA user_version, and the JSON export's schema_version.
SCHEMA_VERSION = 26
HEAD = f"{SCHEMA_VERSION:04d}"  # tests check that this is Alembic's head


def is_current(connection: Connection) -> bool:
    """Whether the database is at this release's schema already: read without a write
    lock (a CLI opening a busy database need not wait), and without loading Alembic's
    scripts."""
    current = MigrationContext.configure(connection).get_current_revision()
    if connection.dialect.name == "sqlite":
        return (
            current == HEAD
            and _pragma(connection, "application_id") == APPLICATION_ID
            and _pragma(connection, "user_version") == SCHEMA_VERSION
        )
    return current == HEAD
