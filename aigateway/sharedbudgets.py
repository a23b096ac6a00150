"""Budgets shared by several gateways on one PostgreSQL database, exactly.

A request of a model with a price, of a key with a budget (its own or its user's), is
checked by one call of `aigateway_budget_reserve` (migration 0008), which locks the
owners' rows in `budget_spend`, checks each and reserves the per-request price against
each only if all pass; calls from every gateway are serialised on the rows, so 100
simultaneous requests over three gateways against a budget of 50 per-request prices relay
exactly 50. What ends (the reservation given back, the cost spent) is written in batches,
like the shared limits' returns. Each gateway also says every few seconds which
reservations it holds (`instance_budget_held`): those of a gateway that went silent are
given back by the others.

The gateway's own Budgets keeps the spend each call reports, plus what ran here since:
while the database is away, LIMITS_WHEN_DATABASE_AWAY decides as for limits (`local`
checks that view, `refuse` answers 503).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .budgets import BudgetLine, Budgets, Refusal, allows, period_start, refusal
from .sharedlimits import DATABASE_AWAY, HEARTBEAT_S, SharedLimits, stop, write_batches

log = logging.getLogger("aigateway.budgets")

_RESERVE = """
SELECT * FROM aigateway_budget_reserve($1::text[], $2::text[], $3::bigint[], $4::bigint[],
    $5::bigint)
"""

# What ended requests give back per owner, and the same off this gateway's ledger:
# $1 owners, $2 periods, $3 period starts, $4 reservations, $5 costs, $6 this gateway.
# A cost from a newer period than the row's starts that period.
_SETTLE = """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
        AS u(owner, period, start, reserved, cost)
), ledger AS (
    UPDATE instance_budget_held AS l SET reserved = greatest(0, l.reserved - u.reserved)
    FROM u WHERE l.instance = $6::text AND l.owner = u.owner
)
UPDATE budget_spend AS b SET
    reserved = greatest(0, b.reserved - u.reserved),
    spent = CASE WHEN u.start > b.period_start THEN u.cost ELSE b.spent + u.cost END,
    period_start = greatest(b.period_start, u.start)
FROM u WHERE b.owner = u.owner AND b.period = u.period
"""

# The reservations of gateways no longer in gateway_instances (the shared limits' reaping
# takes out those silent for DEAD_AFTER_S).
_REAP = """
WITH held AS (
    DELETE FROM instance_budget_held
    WHERE instance NOT IN (SELECT instance FROM gateway_instances)
    RETURNING owner, reserved
)
UPDATE budget_spend AS b SET reserved = greatest(0, b.reserved - h.reserved)
FROM (SELECT owner, sum(reserved) AS reserved FROM held GROUP BY owner) AS h
WHERE b.owner = h.owner
"""


@dataclass(slots=True)
class _Back:
    """What ended requests give back for one owner, gathered until the next batch."""

    period: str
    start: int
    reserved: int = 0
    cost: int = 0

    def add(self, other: _Back) -> None:
        """Gather `other` in; a cost from a newer period than this one's starts it."""
        self.reserved += other.reserved
        self.cost += other.cost
        if other.start > self.start:
            self.period, self.start = other.period, other.start


class SharedBudgets:
    def __init__(self, limits: SharedLimits, local: Budgets) -> None:
        self._limits = limits  # its pool, its idea of whether the database is away
        self.local = local
        self._held: dict[str, int] = {}  # reservations this gateway holds, per owner
        self._returns: dict[str, _Back] = {}
        # Costs given back here and not yet written (waiting, or in a batch on its way):
        # what the database's spend does not include yet.
        self._unwritten: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def when_away(self) -> str:
        return self._limits.when_away

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_returns(), name="aigateway-budget-returns"),
            asyncio.create_task(self._heartbeat(), name="aigateway-budget-heartbeat"),
        ]

    async def close(self) -> None:
        """Before SharedLimits.close (which holds the pool)."""
        await stop(self._tasks)
        try:
            await self._flush()
            async with self._limits.connection() as conn:
                await conn.execute(
                    "DELETE FROM instance_budget_held WHERE instance = $1", self._limits.instance
                )
        except DATABASE_AWAY as exc:
            log.warning("could not give back this gateway's budget reservations: %s", exc)

    async def reserve(
        self, lines: tuple[BudgetLine, ...], price: int, now: float
    ) -> Refusal | bool | None:
        """Check a request's budgets across all gateways and reserve its per-request
        price: True when it passed, the refusal, or None when the database is away."""
        if self._limits.away():
            return None
        ordered = sorted(lines)  # every call locks the rows in one order: no deadlock
        starts = [period_start(line.budget.period, now) for line in ordered]
        try:
            async with self._limits.connection(2.0) as conn:
                row = await conn.fetchrow(
                    _RESERVE,
                    [line.owner for line in ordered],
                    [line.budget.period for line in ordered],
                    starts,
                    [line.budget.amount for line in ordered],
                    price,
                    timeout=2.0,
                )
        except DATABASE_AWAY as exc:
            self._limits.went_away(exc)
            return None
        passed, spent, reserved = row[0], list(row[1]), list(row[2])
        for line, owner_spent in zip(ordered, spent, strict=True):
            # (A batch written just before this call may be counted twice until the
            # next: the view kept for an outage errs on the side of refusing.)
            self.local.observe(line, owner_spent + self._unwritten.get(line.owner, 0), now)
        if passed:
            if price:
                for line in ordered:
                    self._held[line.owner] = self._held.get(line.owner, 0) + price
            return True
        for line, owner_spent, owner_reserved in zip(ordered, spent, reserved, strict=True):
            if not allows(line.budget, owner_spent, owner_reserved, price):
                return refusal(line, owner_spent, owner_reserved, self.local.currency, now)
        # (cannot happen: the function refused because one of them did not allow it)
        return refusal(ordered[0], spent[0], reserved[0], self.local.currency, now)

    def give_back(
        self, lines: tuple[BudgetLine, ...], reserved: int, cost: int, now: float
    ) -> None:
        """A request ended: give back what it reserved here and spend its cost, with
        the next batch (never waited for)."""
        if not reserved and not cost:
            return
        for line in lines:
            back = _Back(line.budget.period, period_start(line.budget.period, now), reserved, cost)
            self._gather(line.owner, back)
            if cost:
                self._unwritten[line.owner] = self._unwritten.get(line.owner, 0) + cost
        self._wake.set()

    def _gather(self, owner: str, back: _Back) -> None:
        gathered = self._returns.get(owner)
        if gathered is None:
            self._returns[owner] = back
        else:
            gathered.add(back)

    async def _write_returns(self) -> None:
        await write_batches(self._wake, self._flush, self._limits.went_away, "budget returns")

    async def _flush(self) -> None:
        async with self._lock:
            self._wake.clear()
            if not self._returns:
                return
            batch, self._returns = self._returns, {}
            owners = list(batch)
            try:
                async with self._limits.connection() as conn:
                    await conn.execute(
                        _SETTLE,
                        owners,
                        [batch[o].period for o in owners],
                        [batch[o].start for o in owners],
                        [batch[o].reserved for o in owners],
                        [batch[o].cost for o in owners],
                        self._limits.instance,
                    )
            except BaseException:
                for owner, back in batch.items():  # keep them for the next try
                    self._gather(owner, back)
                raise
            for owner, back in batch.items():
                left = self._held.get(owner, 0) - back.reserved
                if left > 0:
                    self._held[owner] = left
                else:
                    self._held.pop(owner, None)
                unwritten = self._unwritten.get(owner, 0) - back.cost
                if unwritten > 0:
                    self._unwritten[owner] = unwritten
                else:
                    self._unwritten.pop(owner, None)

    async def _heartbeat(self) -> None:
        """Say which reservations this gateway holds; give back those of gone gateways."""
        instance = self._limits.instance
        while True:
            try:
                async with self._lock, self._limits.connection() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO gateway_instances (instance, seen_at)"
                        " VALUES ($1, extract(epoch FROM clock_timestamp()))"
                        " ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at",
                        instance,
                    )
                    await conn.execute(
                        "DELETE FROM instance_budget_held WHERE instance = $1", instance
                    )
                    held = [(instance, owner, amount) for owner, amount in self._held.items()]
                    if held:
                        await conn.executemany(
                            "INSERT INTO instance_budget_held (instance, owner, reserved)"
                            " VALUES ($1, $2, $3)",
                            held,
                        )
                    await conn.execute(_REAP)
            except DATABASE_AWAY as exc:
                self._limits.went_away(exc)
            except Exception:
                log.exception("could not write this gateway's budget reservations; trying again")
            await asyncio.sleep(HEARTBEAT_S)
