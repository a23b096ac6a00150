"""aliases: model names that stand for other models (global, per user, per key)

Revision ID: 0022
Revises: 0021

New: nothing to fill from earlier releases, which had no aliases.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("canonical", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column(
            "scope",
            sa.Text,
            sa.CheckConstraint("scope IN ('global', 'user', 'key')"),
            nullable=False,
        ),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index(
        "model_aliases_owner", "model_aliases", ["scope", "owner", "canonical"], unique=True
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
