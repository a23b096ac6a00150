"""keys.created_by: the key that made a key by self-service (SELF_SERVICE_KEYS)

Revision ID: 0019
Revises: 0018

NULL for every key an admin made (all keys of earlier releases), so existing rows keep
their meaning. Indexed: a key's own keys are counted (its cap) and revoked with it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("created_by", sa.BigInteger))
    op.create_index("keys_created_by", "keys", ["created_by"])


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
