"""What gateways sharing a PostgreSQL database tell each other for the dashboard's Now:
each one's requests in flight (now_gateways, one row a gateway, published only while an
admin watches), and, by NOTIFY on NOW_CHANNEL, "someone watches" and "stop this request"."""

from __future__ import annotations

from sqlalchemy import delete, func, select

from .connection import Connector, driver_connection
from .schema import now_gateways

NOW_CHANNEL = "aigateway_now"
_PUBLISH = (
    "INSERT INTO now_gateways (gateway, published_at, snapshot) VALUES ($1, $2, $3)"
    " ON CONFLICT (gateway) DO UPDATE SET published_at = $2, snapshot = $3"
)
_PUBLISHED = "SELECT gateway, published_at, snapshot FROM now_gateways WHERE published_at >= $1"


class NowQueries(Connector):
    async def publish_now(self, gateway: str, at: float, snapshot: str) -> None:
        """This gateway's requests in flight (JSON), replacing what it published before.
        (PostgreSQL only; on asyncpg's own connection, one prepared statement: it runs
        every PUBLISH_S while watched, and SQLAlchemy's part cost more than the query.)"""
        async with self._write() as conn:
            driver = await driver_connection(conn)
            await driver.execute(_PUBLISH, gateway, at, snapshot)

    async def published_now(
        self, since: float, notify: str | None = None
    ) -> list[tuple[str, float, str]]:
        """Every gateway's snapshot published at `since` or later: gateway, when, JSON;
        with `notify`, that payload sent on NOW_CHANNEL in the same transaction
        (PostgreSQL only, on asyncpg's own connection, as publish_now)."""
        async with self._read() as conn:
            driver = await driver_connection(conn)
            if notify is not None:
                await driver.execute("SELECT pg_notify($1, $2)", NOW_CHANNEL, notify)
            rows = await driver.fetch(_PUBLISHED, since)
            return [(row[0], row[1], row[2]) for row in rows]

    async def forget_now(self, gateway: str) -> None:
        """This gateway's snapshot gone (nobody watches, or it stops)."""
        async with self._write() as conn:
            await conn.execute(delete(now_gateways).where(now_gateways.c.gateway == gateway))

    async def notify_now(self, payload: str) -> None:
        """Tell every gateway listening on NOW_CHANNEL (this one too): "watch", or a stop."""
        async with self._write() as conn:
            await conn.execute(select(func.pg_notify(NOW_CHANNEL, payload)))
