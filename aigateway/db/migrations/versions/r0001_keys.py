"""keys

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", Id, primary_key=True),
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
    )
    op.create_index(
        "keys_active_user_name",
        "keys",
        ["user", "name"],
        unique=True,
        sqlite_where=sa.text("revoked = 0"),
        postgresql_where=sa.text("revoked = 0"),
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
