"""The shared limits' bookkeeping on a real PostgreSQL database: what each gateway holds,
what it gives back, and what the others give back for a gateway they took for dead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigateway.access import limits_shared as sharedlimits
from aigateway.access.limits import Limits
from aigateway.access.limits_shared import SharedLimits, Ticket
from aigateway.db.store import Store
from aigateway.db.url import database_from

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


async def test_three_gateways_hammering_three_keys_keep_counts_and_ledgers_exact(
    pg_url: str,
) -> None:
    """600 requests over three gateways and three keys (limited to 4 at once each), every
    one retried until admitted, held a moment, given back (some of them at once, the rest
    with the next admission or batch), while the gateways reap: never more than 4 of a
    key at once, no statement failed (a deadlock, say: the gateway would take the
    database for away), and at the end every count and ledger back at 0 and every token
    counted once."""
    store = await Store.open(database_from(pg_url))
    await store.close()
    gateways = [_Watched(database_from(pg_url)) for _ in range(3)]
    for gateway in gateways:
        await gateway.start()
    limits = Limits(max_concurrent=4, tokens_per_day=10**9)
    running = {key: 0 for key in (1, 2, 3)}
    most = dict(running)

    async def one(n: int) -> None:
        gateway, key = gateways[n % 3], 1 + n // 3 % 3
        while True:
            admission = await gateway.admit(key, limits, 7)
            assert admission is not None and not admission.away
            if admission.ticket is not None:
                break
            await asyncio.sleep(0.002)
        running[key] += 1
        most[key] = max(most[key], running[key])
        await asyncio.sleep(0.001 * (n % 4))
        running[key] -= 1
        gateway.give_back(admission.ticket, tokens=3, relayed=True)
        if n % 2:
            await gateway.returned(admission.ticket)

    async def reap() -> None:
        while True:
            async with gateways[0].connection() as conn:
                await conn.execute(sharedlimits._GONE, sharedlimits.DEAD_AFTER_S, None)
                await conn.execute(sharedlimits._REAP)
            await asyncio.sleep(0.01)

    reaper = asyncio.create_task(reap())
    try:
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(600))), 120)
    finally:
        reaper.cancel()
        await asyncio.gather(reaper, return_exceptions=True)
    assert max(most.values()) <= 4 and min(most.values()) >= 2, most
    assert [gateway.faults for gateway in gateways] == [[], [], []]
    for gateway in gateways:
        await gateway._flush(everything=True)
    use = await gateways[0].current([1, 2, 3])
    assert [use[k]["in_flight"] for k in (1, 2, 3)] == [0, 0, 0]
    assert [use[k]["tokens_reserved"] for k in (1, 2, 3)] == [0, 0, 0]
    sent = [sum(1 for n in range(600) if 1 + n // 3 % 3 == k) for k in (1, 2, 3)]
    assert [use[k]["tokens_today"] for k in (1, 2, 3)] == [3 * count for count in sent]
    assert await _ledger(gateways[0]) == {}
    for gateway in gateways:
        await gateway.close()


class _Watched(SharedLimits):
    """SharedLimits that keeps what made it take the database for away (a deadlock,
    say), which it otherwise only logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults: list[str] = []

    def went_away(self, exc: BaseException) -> None:
        self.faults.append(repr(exc))
        super().went_away(exc)
