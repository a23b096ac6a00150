"""response cache: usage.cached

Revision ID: 0026
Revises: 0025

`usage.cached` is 1 for a request answered from the response cache (CACHE_SIZE), not by an
upstream; 0 for every earlier record, which an upstream answered.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("cached", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
