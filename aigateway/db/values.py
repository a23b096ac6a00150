"""What the entity modules share: stored values read back as the records hold them
(times, limits, budgets, model lists), whatever a hand edit left; the same values as they
are stored; and sums of tokens and cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import func

from ..records import (
    MAX_EXPIRES_AT,
    MAX_LIMIT,
    PERIODS,
    Budget,
    BudgetError,
    InvalidInputError,
    check_budget,
)
from .schema import usage

TOKENS = func.coalesce(usage.c.prompt_tokens, 0) + func.coalesce(usage.c.completion_tokens, 0)
_GIGA = 10**9


def cost_sum(column: Any) -> Any:
    """SUM of a column of nano-units that cannot overflow: SQLite's sum() of integers
    raises past 2^63. Summed in two parts, whole 10^9 and the rest, each far from it; their
    total is a float in SQLite (exact to 2^53) or a numeric in PostgreSQL when it is past
    2^63, for `saturated` to bring to MAX_SUM_NANO."""
    return func.coalesce(func.sum(column // _GIGA), 0) * _GIGA + func.coalesce(
        func.sum(column % _GIGA), 0
    )


def checked_budget(value: object) -> Budget | None:
    """A budget a change names: a Budget, or None to remove one."""
    if value is not None and not isinstance(value, Budget):
        raise InvalidInputError(f"a budget must be a Budget or None, not {value!r}")
    return value


def budget_values(budget: Budget | None) -> dict[str, object]:
    if budget is None:
        return {"budget": None, "budget_period": None, "budget_alert": None}
    try:
        budget = check_budget(budget.amount, budget.period, budget.alert)
    except BudgetError as exc:
        raise InvalidInputError(str(exc)) from None
    return {"budget": budget.amount, "budget_period": budget.period, "budget_alert": budget.alert}


def read_budget(values: Sequence[Any]) -> Budget | None:
    """A budget as stored; one a hand edit made unreadable is read as 0 (nothing may be
    spent), never as no budget."""
    amount, period, alert = values
    if amount is None:
        return None
    try:
        return check_budget(amount, period, alert)
    except BudgetError:
        amount = amount if isinstance(amount, int) and 0 <= amount <= 10**15 else 0
        return Budget(amount, period if period in PERIODS else "total")


def read_time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(min(max(value, 0), MAX_EXPIRES_AT - 1))
    return None


def read_limit(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LIMIT:
        return value
    return None


def read_models(value: object) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    try:
        patterns = orjson.loads(value) if isinstance(value, str | bytes) else None
    except orjson.JSONDecodeError:
        patterns = None
    if not isinstance(patterns, list):
        return ()  # unreadable: no model, never every model
    return tuple(p for p in patterns if isinstance(p, str))


def models_json(models: tuple[str, ...] | None) -> str | None:
    return orjson.dumps(list(models)).decode() if models else None
