"""What a user's budgets stand at, from the usage records written so far: for
`check-budget` in the CLIs and the admin API. (A gateway also holds the reserved costs
of requests still running; those are not records yet.) Amounts are summed in nano-units
and shown in micro-units, each rounded once from its sum."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..access.budgets import budget_view, period_start
from ..records import BudgetLine, UsageQuery, micro
from .views import utc_text

if TYPE_CHECKING:  # (the CLIs import this module; the store is loaded when used)
    from ..db.store import Store


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
    user_spent = await store.spend_since(f"user:{user.id}", start)
    report: dict[str, Any] = {
        "user": user.name,
        "currency": currency,
        "period": period,
        "period_start": utc_text(start),
        "spent": micro(user_spent),
        "budget": None,
        "keys": [],
    }
    if user.budget is not None:
        line = BudgetLine(f"user:{user.id}", f"user '{user.name}'", user.budget)
        report["budget"] = _shown(budget_view(line, user_spent, 0, now))
    for record in records:
        entry: dict[str, Any] = {
            "id": record.id,
            "key_name": record.name,
            "spent": micro(await store.spend_since(f"key:{record.id}", start)),
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
        "period_start": utc_text(view["period_start"]),
        "resets_at": utc_text(view["resets_at"]),
    }


async def user_invoice(
    store: Store, name: str, currency: str, since: float, until: float | None
) -> dict[str, Any]:
    """A user's usage in a period as invoice lines, one per model (requests, tokens,
    cost in micro-units), and their total (its cost rounded once from the nano-units of
    every line, not the sum of the lines' rounded costs). Records made before prices
    existed have no cost: their lines say null and the total counts them as
    `unpriced_requests`."""
    user = await store.get_user(name)
    where = UsageQuery(since=since, until=until, user=name)
    rows = await store.usage_summary(("model",), where)
    whole = await store.usage_summary((), where)
    lines = [
        {
            "model": row["model"],
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost": row["cost"],
        }
        for row in rows
    ]
    return {
        "user": user.name,
        "email": user.email,
        "since": utc_text(since),
        "until": utc_text(until),
        "currency": currency,
        "lines": lines,
        "total": {
            "requests": sum(line["requests"] for line in lines),
            "prompt_tokens": sum(line["prompt_tokens"] for line in lines),
            "completion_tokens": sum(line["completion_tokens"] for line in lines),
            "cost": (whole[0]["cost"] or 0) if whole else 0,
            "unpriced_requests": sum(line["requests"] for line in lines if line["cost"] is None),
        },
    }
