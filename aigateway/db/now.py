"""What gateways sharing a PostgreSQL database tell each other for the dashboard's Now:
each one's requests in flight (now_gateways, one row a gateway, published only while an
admin watches), and, by NOTIFY on NOW_CHANNEL, "someone watches" and "stop this request"."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql

from .connection import Connector
from .schema import now_gateways

NOW_CHANNEL = "aigateway_now"


class NowQueries(Connector):
    async def publish_now(self, gateway: str, at: float, snapshot: str) -> None:
        """This gateway's requests in flight (JSON), replacing what it published before."""
        statement = postgresql.insert(now_gateways).values(
            gateway=gateway, published_at=at, snapshot=snapshot
        )
        statement = statement.on_conflict_do_update(
            index_elements=[now_gateways.c.gateway],
            set_={"published_at": at, "snapshot": snapshot},
        )
        async with self._write() as conn:
            await conn.execute(statement)

    async def published_now(self, since: float) -> list[tuple[str, float, str]]:
        """Every gateway's snapshot published at `since` or later: gateway, when, JSON."""
        query = select(
            now_gateways.c.gateway, now_gateways.c.published_at, now_gateways.c.snapshot
        ).where(now_gateways.c.published_at >= since)
        async with self._read() as conn:
            return [(g, at, text) for g, at, text in (await conn.execute(query)).all()]

    async def forget_now(self, gateway: str) -> None:
        """This gateway's snapshot gone (nobody watches, or it stops)."""
        async with self._write() as conn:
            await conn.execute(delete(now_gateways).where(now_gateways.c.gateway == gateway))

    async def notify_now(self, payload: str) -> None:
        """Tell every gateway listening on NOW_CHANNEL (this one too): "watch", or a stop."""
        async with self._write() as conn:
            await conn.execute(select(func.pg_notify(NOW_CHANNEL, payload)))
