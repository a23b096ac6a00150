"""prices, and a cost (and Ollama's model time) on every usage record

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prices",
        sa.Column("pattern", sa.Text, primary_key=True),
        sa.Column("per_request", sa.BigInteger, nullable=False),
        sa.Column("per_million_input", sa.BigInteger, nullable=False),
        sa.Column("per_million_output", sa.BigInteger, nullable=False),
        sa.Column("per_second", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    # Records made before prices existed keep a NULL cost: not free, unknown.
    op.add_column("usage", sa.Column("cost", sa.BigInteger))
    op.add_column("usage", sa.Column("model_ns", sa.BigInteger))


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
