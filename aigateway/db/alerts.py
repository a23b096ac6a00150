"""The alerts outbox (alerts_outbox): alerts added once per kind|subject|period, taken
by one sender at a time, marked sent, due again later, or given up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .connection import Connector
from .schema import alerts_outbox

DUE, SENT, DROPPED = "due", "sent", "dropped"


class OutboxRow(NamedTuple):
    dedupe: str
    kind: str
    body: str  # JSON
    created_at: float


class ClaimedAlert(NamedTuple):
    id: int
    dedupe: str
    kind: str
    body: str
    created_at: float
    attempts: int  # with this one


class AlertQueries(Connector):
    """Writes and reads of the alerts outbox."""

    async def add_alerts(self, rows: Sequence[OutboxRow]) -> int:
        """Add the alerts not added before (by anyone): how many were new."""
        if not rows:
            return 0
        make = pg_insert if self.database.backend == "postgresql" else sqlite_insert
        values = [
            {**row._asdict(), "state": DUE, "due_at": row.created_at, "attempts": 0} for row in rows
        ]
        statement = make(alerts_outbox).values(values).on_conflict_do_nothing()
        async with self._write() as conn:
            result = await conn.execute(statement.returning(alerts_outbox.c.id))
            return len(result.all())

    async def claim_alerts(self, now: float, lease_s: float, most: int) -> list[ClaimedAlert]:
        """Take up to `most` alerts due by `now` for `lease_s` seconds: no other sender
        takes them meanwhile (PostgreSQL: rows another sender is taking are skipped, not
        waited for); one not marked by then is due again (its sender died)."""
        a = alerts_outbox.c
        due = (
            select(a.id)
            .where(a.state == DUE, a.due_at <= now)
            .order_by(a.due_at, a.id)
            .limit(most)
            .with_for_update(skip_locked=True)  # (SQLite: one writer at a time anyway)
        )
        statement = (
            update(alerts_outbox)
            .where(a.id.in_(due.scalar_subquery()))
            .values(due_at=now + lease_s, attempts=a.attempts + 1)
            .returning(a.id, a.dedupe, a.kind, a.body, a.created_at, a.attempts)
        )
        async with self._write() as conn:
            rows = (await conn.execute(statement)).all()
        return sorted((ClaimedAlert(*row) for row in rows), key=lambda r: r.id)

    async def alert_sent(self, alert_id: int, now: float) -> None:
        await self._finish(alert_id, state=SENT, done_at=now, last_error=None)

    async def alert_dropped(self, alert_id: int, now: float, error: str) -> None:
        await self._finish(alert_id, state=DROPPED, done_at=now, last_error=error)

    async def alert_due_again(self, alert_id: int, due_at: float, error: str) -> None:
        await self._finish(alert_id, due_at=due_at, last_error=error)

    async def _finish(self, alert_id: int, **values: object) -> None:
        a = alerts_outbox.c
        async with self._write() as conn:
            await conn.execute(
                update(alerts_outbox).where(a.id == alert_id, a.state == DUE).values(**values)
            )

    async def prune_alerts(self, before: float) -> int:
        """Forget alerts sent or given up before `before` (their dedupe with them)."""
        a = alerts_outbox.c
        async with self._write() as conn:
            result = await conn.execute(
                delete(alerts_outbox).where(a.state != DUE, a.done_at < before)
            )
            return int(result.rowcount or 0)

    async def alert_states(self) -> dict[str, int]:
        """How many alerts are in each state (due, sent, dropped)."""
        a = alerts_outbox.c
        async with self._read() as conn:
            rows = (await conn.execute(select(a.state, func.count()).group_by(a.state))).all()
        return {str(state): int(n) for state, n in rows}
