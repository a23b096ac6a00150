"""Refused requests per hour, reason and key (refusals_hourly): added to in batches by
the usage writer, exactly once per batch name; summed for the admin API."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import func, select

from .connection import Connector, driver_connection
from .rollups import HOUR
from .schema import refusals_hourly
from .usage import _claim_segment

# The key id of requests refused before a key was known (no key, a malformed or an
# unknown one): one row per hour and reason, whatever was sent.
NO_KEY = -1


class RefusalRow(NamedTuple):
    hour: int  # its start, seconds since the epoch
    reason: str  # an errors.Refused value
    key_id: int  # NO_KEY: none known
    user: str  # "" with NO_KEY
    key_name: str
    requests: int


class RefusalQueries(Connector):
    """Writes and reads of the refusal counts."""

    async def add_refusals(self, rows: Sequence[RefusalRow], batch: str) -> bool:
        """Add `rows` to their hours' counts in one transaction that also notes `batch`
        (as a journal segment's name is noted): False, and nothing added, when a batch of
        that name was added before. Rows are added in key order, so gateways adding at
        once lock them in the same order."""
        async with self._write() as conn:
            if not await _claim_segment(conn, batch):
                return False
            if rows:
                # On the driver's connection, one cached statement (as the rollups are
                # added): SQLAlchemy compiling an upsert each flush cost more than it.
                driver = await driver_connection(conn)
                numbered = conn.dialect.paramstyle.startswith("numeric")
                await driver.executemany(_upsert_sql(numbered), sorted(rows))
        return True

    async def refused_summary(
        self,
        since: float | None = None,
        until: float | None = None,
        key_id: int | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Refusals of the hours that overlap [since, until) (counted per whole hour),
        of one key or user when given: their number, by reason, per user and per key,
        and those refused before a key was known (`without_key`)."""
        r = refusals_hourly.c
        clauses = []
        if since is not None:
            clauses.append(r.hour > since - HOUR)  # the hour `since` falls in counts
        if until is not None:
            clauses.append(r.hour < math.ceil(until))
        if key_id is not None:
            clauses.append(r.key_id == key_id)
        if user is not None:
            clauses.append(r.user == user)
        statement = (
            select(r.key_id, r.user, r.key_name, r.reason, func.sum(r.requests))
            .where(*clauses)
            .group_by(r.key_id, r.user, r.key_name, r.reason)
        )
        async with self._read() as conn:
            rows = (await conn.execute(statement)).all()
        return refused_document(rows)


@cache
def _upsert_sql(numbered: bool) -> str:
    """Add a RefusalRow to its row, making it when it is not there yet (the same ON
    CONFLICT on SQLite and PostgreSQL); placeholders `?` or asyncpg's `$1...`."""
    places = ", ".join(f"${n}" for n in range(1, 7)) if numbered else "?, ?, ?, ?, ?, ?"
    return (
        'INSERT INTO refusals_hourly (hour, reason, key_id, "user", key_name, requests)'
        f" VALUES ({places}) ON CONFLICT (hour, reason, key_id)"
        " DO UPDATE SET requests = refusals_hourly.requests + excluded.requests"
    )


def refused_document(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """(key_id, user, key_name, reason, requests) sums as the API shows them: every
    by_reason sorted by reason, users by name, keys by id."""
    whole = _Tally()
    without_key = _Tally()
    users: dict[str, _Tally] = {}
    keys: dict[int, tuple[str, str, _Tally]] = {}
    for key_id, user, key_name, reason, requests in rows:
        n = int(requests or 0)
        whole.add(reason, n)
        if key_id == NO_KEY:
            without_key.add(reason, n)
            continue
        users.setdefault(user, _Tally()).add(reason, n)
        found = keys.get(int(key_id))
        if found is None:
            found = keys[int(key_id)] = (user, key_name, _Tally())
        found[2].add(reason, n)
    return {
        **whole.view(),
        "per_user": [{"user": name, **users[name].view()} for name in sorted(users)],
        "per_key": [
            {"key_id": kid, "user": keys[kid][0], "key_name": keys[kid][1], **keys[kid][2].view()}
            for kid in sorted(keys)
        ],
        "without_key": without_key.view(),
    }


class _Tally:
    __slots__ = ("by_reason", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.by_reason: dict[str, int] = {}

    def add(self, reason: str, n: int) -> None:
        self.requests += n
        self.by_reason[reason] = self.by_reason.get(reason, 0) + n

    def view(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_reason": dict(sorted(self.by_reason.items()))}
