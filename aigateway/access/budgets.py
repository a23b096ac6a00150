"""Budgets: how much a user (all its keys together) or a single key may spend per period.

A budget is an amount in micro-units of CURRENCY (the admin's unit), a period (`total`,
`daily`, `weekly`, `monthly`; each begins at 00:00 UTC: of the day, of Monday, of the 1st)
and an optional alert threshold in percent, logged (and raised as an alert, see
alerts/) once per period, as is a budget used up. What has been spent is
held in memory in nano-units (the unit of costs, see pricing.py) per owner and period (no
disk I/O per request), loaded from the usage table when a budget appears or changes its
period, and set to 0 when a new period begins.

A request of a model with a price is checked before it is relayed, once its body is read,
the way token quotas are: it reserves its reserved cost (`Price.reserve`: its per-request
price, its prompt estimate and output reservation at the token prices, BUDGET_TIME_RESERVE
seconds at the per-second price) against every budget it counts against, and is admitted
only while what was spent plus what running requests reserved is below the budget and its
own per-request price still fits whole. When it ends its reservation is replaced by its
cost. So 100 simultaneous requests against a budget that covers 50 per-request prices relay
exactly 50, and parallel requests priced by tokens or time cannot overrun a budget many
times over: the period's spend ends below the budget plus what the requests admitted last
used beyond their reservations. (On PostgreSQL several gateways share the same reckoning:
sharedbudgets.py.)
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from ..records import DAY, Alert, AlertSink, Budget, BudgetLine, add_saturated, micro, money

log = logging.getLogger("aigateway.budgets")

# 1970-01-01 was a Thursday: days since the epoch plus this, modulo 7, is 0 on Mondays.
_MONDAY_SHIFT = 3


def budget_json(budget: Budget | None) -> dict[str, object] | None:
    """A budget as the admin API and JSON exports show it (amount in micro-units)."""
    if budget is None:
        return None
    return {"amount": budget.amount, "period": budget.period, "alert_percent": budget.alert}


def describe(budget: Budget | None) -> str:
    """`50.000000 monthly, alert 80%`, for tables and CSV cells ("" for none)."""
    if budget is None:
        return ""
    text = f"{money(budget.amount)} {budget.period}"
    return text if budget.alert is None else f"{text}, alert {budget.alert}%"


def period_start(period: str, now: float) -> int:
    """When the period holding `now` began (Unix seconds, UTC); 0 for `total`."""
    if period == "total":
        return 0
    day = int(now // DAY)
    if period == "daily":
        return day * DAY
    if period == "weekly":
        return (day - (day + _MONDAY_SHIFT) % 7) * DAY
    moment = datetime.fromtimestamp(now, UTC)
    return calendar.timegm((moment.year, moment.month, 1, 0, 0, 0))


def period_end(period: str, now: float) -> int | None:
    """When the period holding `now` ends and the budget is whole again (None: never)."""
    if period == "total":
        return None
    start = period_start(period, now)
    if period == "daily":
        return start + DAY
    if period == "weekly":
        return start + 7 * DAY
    moment = datetime.fromtimestamp(start, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Refusal(NamedTuple):
    """A request over a budget: what the error says, and when to try again."""

    message: str
    retry_after: int | None  # seconds until the period ends; None for `total`


def refusal(
    line: BudgetLine,
    spent: int,
    reserved: int,
    currency: str,
    now: float,
    price: int = 0,
    reserve: int = 0,
) -> Refusal:
    """What a refused request is told (amounts in nano-units, shown in micro-units): what
    did not fit, the request's reserved cost and how to lower it, and when to try again."""
    budget = line.budget
    end = period_end(budget.period, now)
    of_budget = f"its {budget.period} budget of {money(budget.amount)} {currency}"
    taken = spent + reserved
    if taken < budget.nano:  # its per-request price did not fit in what is left
        message = (
            f"budget exhausted: {line.label} needs {money(micro(price))} {currency} per"
            f" request; {money(micro(budget.nano - taken))} {currency} left of {of_budget}"
        )
    else:
        message = f"budget exhausted: {line.label} has spent {money(micro(spent))} {currency}"
        message += f" of {of_budget}"
        if reserved:
            message += f" ({money(micro(reserved))} more reserved by requests still running)"
    if reserve > price:
        message += (
            f"; a request of this model reserves {money(micro(reserve))} {currency} while it"
            " runs (its price per request, its prompt and output tokens, its time), a lower"
            " max_tokens / num_predict reserves less"
        )
    if end is None:
        message += "; it does not reset (an administrator can raise it)"
        return Refusal(message, None)
    return Refusal(f"{message}; it resets at {iso(end)}", max(1, math.ceil(end - now)))


def allows(budget: Budget, spent: int, reserved: int, price: int) -> bool:
    """Whether a request fits (nano-units): while what was spent and reserved is below the
    budget, and with a per-request price `price`, if that price fits whole."""
    taken = spent + reserved
    return taken + price <= budget.nano if price else taken < budget.nano


@dataclass(slots=True)
class _Spend:
    period: str
    start: int
    end: float  # when the period ends (infinity for `total`)
    spent: int = 0  # nano-units
    reserved: int = 0  # reserved costs of requests still running (nano-units)
    alerted: int = -1  # the period start whose alert was logged
    exhausted: int = -1  # the period start whose exhaustion was raised


def _new_spend(period: str, now: float) -> _Spend:
    end = period_end(period, now)
    return _Spend(period, period_start(period, now), math.inf if end is None else end)


SpendLoader = Callable[[str, float], Awaitable[int]]


class Budgets:
    """Spend per owner for the current period, held in memory (this gateway's own view;
    with shared budgets, the view the database last gave plus what ran here since)."""

    def __init__(self, currency: str, alerts: AlertSink | None = None) -> None:
        self.currency = currency
        self._spend: dict[str, _Spend] = {}
        self._alerts = alerts  # None: alerts are off

    async def prepare(self, lines: Iterable[BudgetLine], load: SpendLoader) -> None:
        """Before a key table with these budgets is used: load what each owner whose
        budget is new, or has a new period, has spent in its current period; forget the
        spend of owners that no longer have a budget."""
        now = time.time()
        wanted: dict[str, BudgetLine] = {line.owner: line for line in lines}
        for owner in list(self._spend):
            if owner not in wanted:
                del self._spend[owner]
        for owner, line in wanted.items():
            spend = self._spend.get(owner)
            if spend is not None and spend.period == line.budget.period:
                continue
            fresh = _new_spend(line.budget.period, now)
            fresh.spent = await load(owner, fresh.start)
            if spend is not None:
                fresh.reserved = spend.reserved
            self._spend[owner] = fresh

    def _current(self, line: BudgetLine, now: float) -> _Spend:
        period = line.budget.period
        spend = self._spend.get(line.owner)
        if spend is None or spend.period != period:
            # Not prepared (a key made a moment ago: it has spent nothing yet).
            spend = self._spend[line.owner] = _new_spend(period, now)
        elif not spend.start <= now < spend.end:  # a new period began (or the clock went back)
            rolled = _new_spend(period, now)
            spend.start, spend.end, spend.spent = rolled.start, rolled.end, 0
        return spend

    def reserve(
        self, lines: tuple[BudgetLine, ...], price: int, reserve: int, now: float
    ) -> Refusal | None:
        """Check every budget of a request (its per-request price `price`) and, if all
        allow it, reserve its reserved cost `reserve` against each (nano-units): no await
        in between, so simultaneous requests see each other's reservations."""
        spends = [self._current(line, now) for line in lines]
        for line, spend in zip(lines, spends, strict=True):
            if not allows(line.budget, spend.spent, spend.reserved, price):
                taken = spend.spent, spend.reserved
                return refusal(line, *taken, self.currency, now, price, reserve)
        if reserve:
            for spend in spends:
                spend.reserved += reserve
        return None

    def settle(self, lines: tuple[BudgetLine, ...], reserved: int, cost: int, now: float) -> None:
        """A request ended: its reservation goes, its cost is spent."""
        for line in lines:
            spend = self._current(line, now)
            left = spend.reserved - reserved
            spend.reserved = left if left > 0 else 0  # (max() costs five times this)
            if cost:
                spend.spent = add_saturated(spend.spent, cost)
            self._maybe_alert(line, spend)

    def add_spent(self, lines: Iterable[BudgetLine], cost: int, when: float, now: float) -> None:
        """Count a cost spent at `when` that the loaded spend does not hold (a record
        the database has not taken yet), in each budget whose period holds it."""
        for line in lines:
            spend = self._current(line, now)
            if spend.start <= when < spend.end:
                spend.spent = add_saturated(spend.spent, cost)

    def observe(self, line: BudgetLine, spent: int, now: float) -> None:
        """What the shared reckoning says the owner has spent (PostgreSQL): kept as this
        gateway's view for when the database is away."""
        spend = self._current(line, now)
        spend.spent = spent
        self._maybe_alert(line, spend)

    def _maybe_alert(self, line: BudgetLine, spend: _Spend) -> None:
        budget = line.budget
        if (
            budget.alert is not None
            and spend.alerted != spend.start
            and spend.spent * 100 >= budget.nano * budget.alert
        ):
            spend.alerted = spend.start
            log.warning(
                "budget alert: %s has spent %s of its %s budget of %s %s (alert at %d%%)",
                line.label,
                money(micro(spend.spent)),
                budget.period,
                money(budget.amount),
                self.currency,
                budget.alert,
            )
            if self._alerts is not None:
                self._alerts(self._alert("budget_alert", line, spend))
        if (
            self._alerts is not None
            and spend.exhausted != spend.start
            and spend.spent >= budget.nano
        ):
            spend.exhausted = spend.start
            self._alerts(self._alert("budget_exhausted", line, spend))

    def _alert(self, kind: str, line: BudgetLine, spend: _Spend) -> Alert:
        budget = line.budget
        spent, amount = money(micro(spend.spent)), money(budget.amount)
        what = f"has reached {budget.alert}% of" if kind == "budget_alert" else "has used up"
        return Alert(
            kind,
            line.owner,
            f"{budget.period}@{spend.start}",
            f"{line.label} {what} its {budget.period} budget: {spent} of {amount} {self.currency}",
            {
                "owner": line.owner,
                "label": line.label,
                "period": budget.period,
                "period_start": spend.start,
                "amount": budget.amount,
                "spent": micro(spend.spent),
                "alert_percent": budget.alert,
                "currency": self.currency,
            },
        )

    def view(self, line: BudgetLine, now: float) -> dict[str, object]:
        spend = self._current(line, now)
        return budget_view(line, spend.spent, spend.reserved, now)


def budget_view(line: BudgetLine, spent: int, reserved: int, now: float) -> dict[str, object]:
    """A budget and its use (`spent`, `reserved` in nano-units), as the admin API and the
    CLIs show it: in micro-units, each rounded once."""
    budget = line.budget
    end = period_end(budget.period, now)
    left = budget.nano - spent - reserved
    return {
        "amount": budget.amount,
        "period": budget.period,
        "alert_percent": budget.alert,
        "spent": micro(spent),
        "reserved": micro(reserved),
        "remaining": micro(left) if left > 0 else 0,
        "period_start": period_start(budget.period, now),
        "resets_at": end,
        "alert_reached": budget.alert is not None and spent * 100 >= budget.nano * budget.alert,
        "exhausted": not allows(budget, spent, reserved, 0),
    }
