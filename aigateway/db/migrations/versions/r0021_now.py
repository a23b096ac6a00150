"""now: who stopped a request (usage.stopped_by), and the gateways' requests in flight

Revision ID: 0021
Revises: 0020

`usage.stopped_by` names the admin ("user/key name") who ended a request from the
dashboard's Now; NULL for every earlier record, which nobody stopped. `now_gateways`
holds, for each gateway sharing a PostgreSQL database, its requests in flight as it last
published them (only while an admin watches Now): one row per gateway, replaced each
time, so it never grows. (SQLite has the table too, unused: one gateway, shown live.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("stopped_by", sa.Text))
    op.create_table(
        "now_gateways",
        sa.Column("gateway", sa.Text, primary_key=True),
        sa.Column("published_at", sa.Double, nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
