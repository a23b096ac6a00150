"""The dashboard sessions table: made at sign-in; ended at sign-out, at expiry, when idle,
and when their key stops working."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .connection import Connector
from .schema import sessions

MAX_SESSIONS_PER_KEY = 20  # live dashboard sessions a key may hold; a new one ends the oldest


class SessionQueries(Connector):
    """Queries of the dashboard sessions table."""

    async def create_session(
        self, id_hash: str, key_id: int, expires_at: float, keep: int = MAX_SESSIONS_PER_KEY
    ) -> None:
        """Store a new session of `key_id`; the key's oldest sessions beyond `keep` (this
        one included) end in the same transaction."""
        now = time.time()
        async with self._write() as conn:
            await conn.execute(
                insert(sessions).values(
                    id_hash=id_hash,
                    key_id=key_id,
                    created_at=now,
                    seen_at=now,
                    expires_at=expires_at,
                )
            )
            newest_others = (
                select(sessions.c.id_hash)
                .where(sessions.c.key_id == key_id, sessions.c.id_hash != id_hash)
                .order_by(sessions.c.created_at.desc(), sessions.c.id_hash)
                .limit(keep - 1)
            )
            await conn.execute(
                delete(sessions).where(
                    sessions.c.key_id == key_id,
                    sessions.c.id_hash != id_hash,
                    sessions.c.id_hash.not_in(newest_others.scalar_subquery()),
                )
            )

    async def sweep_sessions(self, now: float, idle_s: float) -> int:
        """Delete every session past its expiry or idle longer than `idle_s`; how many."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(sessions).where(
                    or_(sessions.c.expires_at <= now, sessions.c.seen_at < now - idle_s)
                )
            )
        return int(result.rowcount)

    async def find_session(self, id_hash: str) -> tuple[int, float, float] | None:
        """(key id, last seen, absolute expiry) of a session, or None."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.key_id, sessions.c.seen_at, sessions.c.expires_at).where(
                        sessions.c.id_hash == id_hash
                    )
                )
            ).first()
        return None if row is None else (int(row[0]), float(row[1]), float(row[2]))

    async def touch_session(self, id_hash: str, seen_at: float) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(sessions).where(sessions.c.id_hash == id_hash).values(seen_at=seen_at)
            )

    async def end_session(self, id_hash: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.id_hash == id_hash))


async def end_sessions_of(conn: AsyncConnection, key_ids: Sequence[int]) -> None:
    """End the dashboard sessions of keys that stop working for good (revoked, purged)."""
    await conn.execute(delete(sessions).where(sessions.c.key_id.in_(key_ids)))
