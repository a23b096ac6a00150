"""Budgets shared by several gateways on one PostgreSQL database, exactly.

A request of a model with a price, of a key with a budget (its own or its user's), is
checked once its body is read by one call of `aigateway_body_reserve` (migrations 0014,
0015), which locks the owners' rows in `budget_spend`, checks each and reserves the
request's reserved cost (nano-units, see budgets.py) against each only if all pass; calls
from every gateway are serialised on the rows, so 100 simultaneous requests over three
gateways against a budget of 50 per-request prices relay exactly 50. The same call takes
the token top-up the request's body asks for (SharedLimits.top_up), both or neither: a
key with limits and a budget waits for two round trips, admission and this. What ends
(the reservation given back, the cost spent) is written in batches, like the shared
limits' returns. Each gateway's ledger of the reservations it holds
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
from typing import NamedTuple

from ..records import BudgetLine, add_saturated
from .budgets import Budgets, Refusal, allows, period_start, refusal
from .limits import Limits, Verdict
from .limits_shared import (
    ADMIT_TIMEOUT_S,
    DATABASE_AWAY,
    SharedLimits,
    Ticket,
    day_refusal,
    stop,
    write_batches,
)

log = logging.getLogger("aigateway.budgets")

# $1 this gateway, $2 key, $3 its tokens per day, $4 more tokens (0: none), $5 owners, $6
# periods, $7 period starts, $8 amounts, $9 per-request price, $10 reserved cost.
_RESERVE = """
SELECT * FROM aigateway_body_reserve($1::text, $2::bigint, $3::bigint, $4::bigint,
    $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint, $10::bigint)
"""


class TopUp(NamedTuple):
    """More tokens an admitted request's body asks for, taken with its budgets'
    reservation in the same call."""

    ticket: Ticket
    limits: Limits
    tokens: int


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
        self.reserved = add_saturated(self.reserved, other.reserved)
        self.cost = add_saturated(self.cost, other.cost)
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
        self,
        lines: tuple[BudgetLine, ...],
        price: int,
        reserve: int,
        now: float,
        top_up: TopUp | None = None,
    ) -> Refusal | Verdict | bool | None:
        """Check a request's budgets across all gateways (its per-request price `price`)
        and reserve its reserved cost `reserve` (nano-units), and take its `top_up`, in
        one round trip: True when both passed, the budget's refusal or the token quota's
        (then nothing was taken), or None when the database is away (nothing taken)."""
        if self._limits.away():
            return None
        ordered = sorted(lines)  # every call locks the rows in one order: no deadlock
        starts = [period_start(line.budget.period, now) for line in ordered]
        key_id = tokens_per_day = tokens = 0
        if top_up is not None:
            key_id, tokens_per_day, tokens = (
                top_up.ticket.key_id,
                top_up.limits.tokens_per_day,
                top_up.tokens,
            )
        try:
            async with self._limits.connection(ADMIT_TIMEOUT_S) as conn:
                row = await conn.fetchrow(
                    _RESERVE,
                    self._limits.instance,
                    key_id,
                    tokens_per_day,
                    tokens,
                    [line.owner for line in ordered],
                    [line.budget.period for line in ordered],
                    starts,
                    [line.budget.nano for line in ordered],
                    price,
                    reserve,
                    timeout=ADMIT_TIMEOUT_S,
                )
        except DATABASE_AWAY as exc:
            self._limits.went_away(exc)
            return None
        tokens_passed, passed, spent, reserved = row[0], row[1], list(row[2]), list(row[3])
        for line, owner_spent in zip(ordered, spent, strict=True):
            # (A batch written just before this call may be counted twice until the
            # next: the view kept for an outage errs on the side of refusing.)
            self.local.observe(line, owner_spent + self._unwritten.get(line.owner, 0), now)
        if passed and tokens_passed:
            return True
        if passed:
            assert top_up is not None
            return day_refusal(top_up.limits)
        currency = self.local.currency
        for line, owner_spent, owner_reserved in zip(ordered, spent, reserved, strict=True):
            if not allows(line.budget, owner_spent, owner_reserved, price):
                return refusal(line, owner_spent, owner_reserved, currency, now, price, reserve)
        # (cannot happen: the function refused because one of them did not allow it)
        return refusal(ordered[0], spent[0], reserved[0], currency, now, price, reserve)

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
                unwritten = self._unwritten.get(line.owner, 0)
                self._unwritten[line.owner] = add_saturated(unwritten, cost)
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
            await asyncio.sleep(self._limits.heartbeat_s)
            try:
                async with self._limits.connection() as conn:
                    await conn.execute(_REAP, None)
            except DATABASE_AWAY as exc:
                self._limits.went_away(exc)
            except Exception:
                log.exception("could not give back the budget reservations of gateways gone")
