"""users: a record of each user (customer), made from the user names on existing keys

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("email", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column(
            "disabled",
            sa.Integer,
            sa.CheckConstraint("disabled IN (0, 1)"),
            nullable=False,
            server_default="0",
        ),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("disabled_at", sa.Double),
    )
    op.add_column("keys", sa.Column("user_id", sa.BigInteger))
    op.create_index("keys_user_id", "keys", ["user_id"])
    # Every user name on a key becomes a user, created when its first key was.
    bind = op.get_bind()
    keys = sa.table("keys", sa.column("user", sa.Text), sa.column("created_at", sa.Double),
                    sa.column("user_id", sa.BigInteger))  # fmt: skip
    first_keys = bind.execute(
        sa.select(keys.c.user, sa.func.min(keys.c.created_at)).group_by(keys.c.user)
    ).all()
    if first_keys:
        op.bulk_insert(
            users,
            [
                {"name": name, "created_at": created or time.time(), "disabled": 0}
                for name, created in first_keys
            ],
        )
    bind.execute(
        sa.update(keys).values(
            user_id=sa.select(users.c.id).where(users.c.name == keys.c.user).scalar_subquery()
        )
    )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
