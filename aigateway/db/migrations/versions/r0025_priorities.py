"""keys.priority and users.priority: the class a key's requests queue in

Revision ID: 0025
Revises: 0024

Both NULL for every existing row: a key then takes its user's class, and a user is
normal, so existing keys queue as they did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("keys", "users"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("priority", sa.SmallInteger))


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
