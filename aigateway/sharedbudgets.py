"""Budgets shared by several gateways on one PostgreSQL database, exactly.

A request of a model with a price, of a key with a budget (its own or its user's), is
checked by one call of `aigateway_budget_reserve` (migration 0008), which locks the
owners' rows in `budget_spend`, checks each and reserves the per-request price against
each only if all pass; calls from every gateway are serialised on the rows, so 100
simultaneous requests over three gateways against a budget of 50 per-request prices relay
exactly 50. What ends (the reservation given back, the cost spent) is written in batches,
like the shared limits' returns. Each gateway's ledger of the reservations it holds
(`instance_budget_held`) changes in the same transactions (migration 0013): those of a
gateway that went silent are given back by the others, once.

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
SELECT * FROM aigateway_budget_reserve($1::text, $2::text[], $3::text[], $4::bigint[],
    $5::bigint[], $6::bigint)
"""

# What ended requests give back per owner, on the owners' rows and this gateway's ledger:
# $1 this gateway, $2 owners, $3 periods, $4 period starts, $5 reservations, $6 costs.
_SETTLE = """
SELECT aigateway_budget_settle($1::text, $2::text[], $3::text[], $4::bigint[], $5::bigint[],
    $6::bigint[])
"""

# The reservations of gateways no longer in gateway_instances (the shared limits take out
# those silent for DEAD_AFTER_S), and $1's (this gateway, as it stops; NULL: none).
_REAP = "SELECT aigateway_budget_reap($1::text)"


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
                await conn.execute(_REAP, self._limits.instance)
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
                    self._limits.instance,
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
                        self._limits.instance,
                        owners,
                        [batch[o].period for o in owners],
                        [batch[o].start for o in owners],
                        [batch[o].reserved for o in owners],
                        [batch[o].cost for o in owners],
                    )
            except BaseException:
                for owner, back in batch.items():  # keep them for the next try
                    self._gather(owner, back)
                raise
            for owner, back in batch.items():
                unwritten = self._unwritten.get(owner, 0) - back.cost
                if unwritten > 0:
                    self._unwritten[owner] = unwritten
                else:
                    self._unwritten.pop(owner, None)

    async def _heartbeat(self) -> None:
        """Give back the reservations of gateways gone (the shared limits say which)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with self._limits.connection() as conn:
                    await conn.execute(_REAP, None)
            except DATABASE_AWAY as exc:
                self._limits.went_away(exc)
            except Exception:
                log.exception("could not give back the budget reservations of gateways gone")
