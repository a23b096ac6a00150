"""usage journal segments; usage.estimated

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_segments",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("written_at", sa.Double, nullable=False),
    )
    op.add_column("usage", sa.Column("estimated", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
