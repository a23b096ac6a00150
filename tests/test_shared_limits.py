"""The shared limits' bookkeeping on a real PostgreSQL database: what each gateway holds,
what it gives back, and what the others give back for a gateway they took for dead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aigateway import sharedlimits
from aigateway.db.url import database_from
from aigateway.limits import Limits
from aigateway.sharedlimits import SharedLimits, Ticket
from aigateway.store import Store

KEY = 7
TWO_AT_ONCE = Limits(max_concurrent=2, tokens_per_day=1_000_000)


@pytest.fixture
async def gateways(pg_url: str) -> AsyncIterator[tuple[SharedLimits, SharedLimits]]:
    store = await Store.open(database_from(pg_url))  # the schema, migrated
    await store.close()
    a, b = SharedLimits(database_from(pg_url)), SharedLimits(database_from(pg_url))
    await a.start()
    await b.start()
    yield a, b
    await b.close()
    await a.close()


async def _admit(limits: SharedLimits, reserve: int = 10) -> Ticket | None:
    admission = await limits.admit(KEY, TWO_AT_ONCE, reserve)
    assert admission is not None
    return admission.ticket


async def _use(limits: SharedLimits) -> dict[str, int]:
    return (await limits.current([KEY]))[KEY]


async def _ledger(limits: SharedLimits) -> dict[str, tuple[int, int]]:
    async with limits.connection() as conn:
        rows = await conn.fetch("SELECT instance, requests, reserved FROM instance_in_flight")
    return {row[0]: (row[1], row[2]) for row in rows if row[1] or row[2]}


async def test_the_ledger_holds_what_each_gateway_holds_at_every_moment(
    gateways: tuple[SharedLimits, SharedLimits],
) -> None:
    a, b = gateways
    first, second = await _admit(a, 10), await _admit(b, 20)
    assert first is not None and second is not None
    assert await _ledger(a) == {a.instance: (1, 10), b.instance: (1, 20)}
    assert await _admit(a) is None  # two at once
    # Given back with the next admission of the key: the slot is free for it.
    a.give_back(first, tokens=4, relayed=True)
    third = await _admit(a, 30)
    assert third is not None
    assert await _ledger(a) == {a.instance: (1, 30), b.instance: (1, 20)}
    use = await _use(a)
    assert (use["in_flight"], use["tokens_today"], use["tokens_reserved"]) == (2, 4, 50)
    # Given back at once (a key with a limit of requests at once: before the answer ends).
    b.give_back(second, tokens=6, relayed=True)
    await b.returned(second)
    use = await _use(a)
    assert (use["in_flight"], use["tokens_today"], use["tokens_reserved"]) == (1, 10, 30)
    assert await _ledger(a) == {a.instance: (1, 30)}


async def test_a_gateway_taken_for_dead_gives_back_nothing_twice(
    gateways: tuple[SharedLimits, SharedLimits],
) -> None:
    """A is taken for dead (silent too long) while its request still runs: B gives its
    slot back. When A's request then ends, A's return must not free B's slot as well."""
    a, b = gateways
    late, held = await _admit(a), await _admit(b)
    assert late is not None and held is not None
    async with b.connection() as conn:
        await conn.execute(sharedlimits._GONE, 1e9, a.instance)  # A alone, as if silent
        await conn.execute(sharedlimits._REAP)
    assert (await _use(b))["in_flight"] == 1  # B's own
    a.give_back(late, tokens=5, relayed=True)
    await a.returned(late)
    use = await _use(b)
    assert (use["in_flight"], use["tokens_today"]) == (1, 5)  # the tokens still count
    assert await _admit(b) is not None
    assert await _admit(b) is None  # B's two: the limit holds


async def test_returns_of_many_keys_go_in_one_batch(
    gateways: tuple[SharedLimits, SharedLimits],
) -> None:
    a, _ = gateways
    tickets = []
    for key in (3, 1, 2):
        admission = await a.admit(key, TWO_AT_ONCE, 5)
        assert admission is not None and admission.ticket is not None
        tickets.append(admission.ticket)
    for ticket in tickets:
        a.give_back(ticket, tokens=1, relayed=True)
    for _ in range(100):
        if not await _ledger(a):
            break
        await asyncio.sleep(0.02)
    assert await _ledger(a) == {}
    use = await a.current([1, 2, 3])
    assert [use[k]["in_flight"] for k in (1, 2, 3)] == [0, 0, 0]
    assert [use[k]["tokens_today"] for k in (1, 2, 3)] == [1, 1, 1]
