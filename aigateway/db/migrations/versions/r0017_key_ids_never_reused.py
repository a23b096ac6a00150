"""keys: ids are never given out twice, on either database

Revision ID: 0017
Revises: 0016

SQLite gave a new key `max(id) + 1`: after a purge the next key took the old key's id,
and with it the old key's usage, spend, counters and dashboard sessions. The table is
rebuilt with AUTOINCREMENT, whose counter (sqlite_sequence) only goes up, and that
counter (on PostgreSQL, the id's sequence) is set to at least the highest key id any
table still holds, so an upgraded database continues after a key purged before it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Every table with a key_id column besides keys itself.
_KEY_ID_TABLES = ("usage", "sessions", "limit_counters", "instance_in_flight")
# Key ids kept as text: usage_hourly's per-key sums, and budget owners "key:ID".
_KEY_ID_TEXT = (
    "SELECT DISTINCT value FROM usage_hourly WHERE dim = 'key'",
    "SELECT substr(owner, 5) FROM budget_spend WHERE owner LIKE 'key:%'",
    "SELECT substr(owner, 5) FROM instance_budget_held WHERE owner LIKE 'key:%'",
)


def upgrade() -> None:
    bind = op.get_bind()
    highest = _highest_key_id(bind)
    if bind.dialect.name == "sqlite":
        # Batch mode copies the rows into a table made with AUTOINCREMENT; given the
        # table as it stands (reflection would drop its unnamed CHECK constraints).
        with op.batch_alter_table(
            "keys",
            recreate="always",
            copy_from=_keys_at_0016(),
            table_kwargs={"sqlite_autoincrement": True},
        ):
            pass
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'keys'"))
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('keys', :seq)"),
            {"seq": highest},
        )
    else:
        _raise_sequence(bind, highest)


def _keys_at_0016() -> sa.Table:
    """The keys table as revisions 0001-0016 left it, columns in their order."""
    table = sa.Table(
        "keys",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("role", sa.Text, sa.CheckConstraint("role IN ('admin', 'user')"), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("last_used_at", sa.Double),
        sa.Column(
            "revoked",
            sa.Integer,
            sa.CheckConstraint("revoked IN (0, 1)"),
            nullable=False,
            server_default="0",
        ),
        sa.Column("revoked_at", sa.Double),
        *(sa.Column(name, sa.BigInteger) for name in ("rpm", "rph", "tokens_per_day")),
        sa.Column("max_concurrent", sa.BigInteger),
        sa.Column("models", sa.Text),
        sa.Column("user_id", sa.BigInteger),
        sa.Column("budget", sa.BigInteger),
        sa.Column("budget_period", sa.Text),
        sa.Column("budget_alert", sa.Integer),
    )
    sa.Index("keys_user_id", table.c.user_id)
    sa.Index(
        "keys_active_user_name",
        table.c.user,
        table.c.name,
        unique=True,
        sqlite_where=sa.text("revoked = 0"),
    )
    return table


def _raise_sequence(bind: sa.Connection, highest: int) -> None:
    """PostgreSQL's sequence never goes back, but a database restored or copied row by
    row may have one behind the ids it holds: move it past the highest."""
    sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('keys', 'id')")).scalar()
    if sequence is None:  # not made by these migrations (no serial id): nothing to move
        return
    last = bind.execute(
        sa.text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")
    ).scalar()
    if highest > int(last or 0):
        bind.execute(
            sa.text("SELECT setval(:sequence, :seq)"), {"sequence": sequence, "seq": highest}
        )


def _highest_key_id(bind: sa.Connection) -> int:
    """The highest key id found in any table that holds key ids (0 when none)."""
    found = [bind.execute(sa.text("SELECT MAX(id) FROM keys")).scalar() or 0]
    for table in _KEY_ID_TABLES:
        found.append(bind.execute(sa.text(f"SELECT MAX(key_id) FROM {table}")).scalar() or 0)
    for query in _KEY_ID_TEXT:
        found.extend(_number(value) for (value,) in bind.execute(sa.text(query)))
    return max(int(value) for value in found)


def _number(value: object) -> int:
    """A key id kept as text; 0 for anything that is not one."""
    text = str(value)
    return int(text) if text.isdigit() else 0


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
