"""The models table: what the last model sync found."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import delete, insert, select

from ..records import MODEL_FIELDS, ModelInfo
from .connection import Connector
from .schema import models


class ModelQueries(Connector):
    """Queries of the models table."""

    async def replace_models(self, found: Sequence[ModelInfo]) -> None:
        """What a sync found, in place of what the last one did (one transaction)."""
        now = time.time()
        rows = [
            {field: getattr(info, field) for field in MODEL_FIELDS} | {"synced_at": now}
            for info in found
        ]
        async with self._write() as conn:
            await conn.execute(delete(models))
            if rows:
                await conn.execute(insert(models), rows)

    async def list_models(self) -> tuple[list[ModelInfo], float | None]:
        """The models of the last sync, by name, and when it ran (None: never)."""
        fields = [models.c[field] for field in MODEL_FIELDS]
        async with self._read() as conn:
            rows = (
                await conn.execute(select(*fields, models.c.synced_at).order_by(models.c.name))
            ).all()
        synced = max((row[-1] for row in rows), default=None)
        return [ModelInfo(*row[:-1]) for row in rows], synced
