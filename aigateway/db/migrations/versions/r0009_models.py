"""models: what Ollama says of each model (sync-models), for price lists and reports

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("family", sa.Text),
        sa.Column("parameter_size", sa.Text),
        sa.Column("quantization", sa.Text),
        sa.Column("context_length", sa.BigInteger),
        sa.Column("size", sa.BigInteger),
        sa.Column("digest", sa.Text),
        sa.Column("synced_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
