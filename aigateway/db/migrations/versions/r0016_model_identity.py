"""usage: the model as sent beside its one identity (protocol/names.py)

Revision ID: 0016
Revises: 0015

From here on `usage.model` holds the model's canonical name (one string per model Ollama
runs) and `usage.model_sent` the name as the request spelled it. Earlier records keep
their spelling in both columns, and their `model` is made canonical, one distinct name
at a time (there are few). The hourly sums keep the spellings they were made with.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigateway.db.migrations.frozen.r0016_names import InvalidModelName, canonical

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("model_sent", sa.Text))
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE usage SET model_sent = model WHERE model IS NOT NULL"))
    names = bind.execute(sa.text("SELECT DISTINCT model FROM usage WHERE model IS NOT NULL"))
    for (name,) in names.fetchall():
        try:
            identity = canonical(name)
        except InvalidModelName:
            continue  # a name Ollama refuses ran nothing: left as it was
        if identity != name:
            bind.execute(
                sa.text("UPDATE usage SET model = :identity WHERE model = :name"),
                {"identity": identity, "name": name},
            )


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")
