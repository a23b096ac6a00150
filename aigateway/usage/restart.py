"""What a start counts before the first request is admitted: the one place that orders it.

Today's tokens (per-key quotas) and each budget's spend live in memory, loaded from the
usage table. Records an earlier run left in the usage journal (killed with SIGKILL, or
stopped while the database was away) belong to them: so the journal is replayed first,
then the counts are loaded from the database, then what the database could not take yet
is counted from the journal directly, and only then does the writer start (its flushes
would otherwise move records between the two while they are read). aiohttp serves no
request before the app's start-up contexts return, so no restart lets a key spend its
quota or its budget twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..access.budgets import Budgets
from ..access.keytable import KeyTable
from ..access.limits import Limiter
from ..db.store import Store
from ..records import DAY, BudgetLine, KeyRecord, UsageRecord
from .writer import UsageWriter


async def count_before_admitting(
    usage: UsageWriter, store: Store, table: KeyTable, limiter: Limiter, budgets: Budgets
) -> None:
    await usage.replay()  # the journal's leftovers into the database, as far as it takes them
    now = time.time()
    limiter.preload_tokens(await store.tokens_since(now - now % DAY), now)
    await prepare_budgets(budgets, table, store)
    count_unwritten(usage.unwritten(), table, limiter, budgets, now)
    usage.start_writing()


async def prepare_budgets(budgets: Budgets, table: KeyTable, store: Store) -> None:
    """Load what every budget's owner spent in its period, and again for budgets that
    appear or change with each key reload."""

    async def prepare(records: list[KeyRecord]) -> None:
        lines = (line for record in records if not record.revoked for line in record.budgets)
        await budgets.prepare(lines, store.spend_since)

    await prepare(table.records())
    table.before_use = prepare


def count_unwritten(
    records: Iterable[UsageRecord],
    table: KeyTable,
    limiter: Limiter,
    budgets: Budgets,
    now: float,
) -> None:
    """Count records the database has not taken yet (they stay queued, and are not
    counted again when it does: the counts are loaded once, at start)."""
    lines: dict[int, tuple[BudgetLine, ...]] = {r.id: r.budgets for r in table.records()}
    today = now - now % DAY
    for record in records:
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        if tokens and record.ts >= today:
            limiter.charge_tokens(record.key_id, tokens, now)
        if record.cost:
            budgets.add_spent(lines.get(record.key_id, ()), record.cost, record.ts, now)
