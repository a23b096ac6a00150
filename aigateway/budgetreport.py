"""What a user's budgets stand at, from the usage records written so far: for
`check-budget` in the CLIs and the admin API. (A gateway also holds the per-request
prices of requests still running as reserved; those are not records yet.)"""

from __future__ import annotations

import time
from typing import Any

from .budgets import BudgetLine, budget_lines, budget_view, period_start
from .keyview import when
from .store import Store


async def user_budget_report(
    store: Store, name: str, currency: str, now: float | None = None
) -> dict[str, Any]:
    """The user's budget and each active key's spend in the user's period (monthly when
    the user has no budget), with the key's own budget where it has one."""
    now = time.time() if now is None else now
    user = await store.get_user(name)
    records = [r for r in await store.list_keys() if r.user_id == user.id and not r.revoked]
    period = user.budget.period if user.budget is not None else "monthly"
    start = period_start(period, now)
    report: dict[str, Any] = {
        "user": user.name,
        "currency": currency,
        "period": period,
        "period_start": when(start),
        "spent": await store.spend_since(f"user:{user.id}", start),
        "budget": None,
        "keys": [],
    }
    if user.budget is not None:
        line = budget_lines(0, user.name, "", user.id, None, user.budget)[0]
        report["budget"] = _shown(budget_view(line, report["spent"], 0, now))
    for record in records:
        entry: dict[str, Any] = {
            "id": record.id,
            "key_name": record.name,
            "spent": await store.spend_since(f"key:{record.id}", start),
            "budget": None,
        }
        if record.budget is not None:
            own = BudgetLine(f"key:{record.id}", "", record.budget)
            own_start = period_start(record.budget.period, now)
            spent = await store.spend_since(own.owner, own_start)
            entry["budget"] = _shown(budget_view(own, spent, 0, now))
        report["keys"].append(entry)
    return report


def _shown(view: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601 for people and JSON readers."""
    return {
        **view,
        "period_start": when(view["period_start"]),
        "resets_at": when(view["resets_at"]),
    }
