"""Priority classes where the gateway queues: the queue alone (classes, fairness within a
class, the age boost on an injected clock, leaving, timeout), and the class a key gets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from aigateway.errors import ServiceUnavailable
from aigateway.records import PRIORITIES
from aigateway.upstreams.queue import AGE_BOOST_S, FairQueue

HIGH, NORMAL, LOW = PRIORITIES["high"], PRIORITIES["normal"], PRIORITIES["low"]


@dataclass(frozen=True)
class Gpu:
    name: str


GPU, OTHER = Gpu("gpu"), Gpu("other")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Queued:
    """A queue on an injected clock, and the requests it served, in order."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.clock = Clock()
        self.queue: FairQueue[Gpu] = FairQueue(timeout, clock=self.clock)
        self.served: list[str] = []
        self.released: list[Gpu] = []

    def enqueue(
        self, label: str, key_id: int, priority: int, on: tuple[Gpu, ...] = (GPU,)
    ) -> asyncio.Task[Gpu]:
        async def waiting() -> Gpu:
            upstream = await self.queue.wait(key_id, on, self.released.append, priority)
            self.served.append(label)
            return upstream

        return asyncio.create_task(waiting())

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def free(self, times: int, upstream: Gpu = GPU) -> None:
        """Free a slot `times` times, one at a time, letting each served waiter run."""
        for _ in range(times):
            assert self.queue.hand_over(upstream)
            await self.settle()


async def test_a_freed_slot_goes_to_the_highest_class_first() -> None:
    q = Queued()
    tasks = [q.enqueue("low", 1, LOW), q.enqueue("normal", 2, NORMAL)]
    await q.settle()
    tasks.append(q.enqueue("high", 3, HIGH))  # arrives last
    await q.settle()
    assert len(q.queue) == 3 and q.queue.waiting() == {"gpu": 3}
    await q.free(3)
    assert q.served == ["high", "normal", "low"]
    assert not q.queue.hand_over(GPU) and len(q.queue) == 0
    await asyncio.gather(*tasks)


async def test_keys_of_one_class_take_turns() -> None:
    q = Queued()
    tasks = [q.enqueue(f"a{n}", 1, HIGH) for n in range(4)]
    await q.settle()
    tasks += [q.enqueue("b0", 2, HIGH), q.enqueue("c0", 3, HIGH), q.enqueue("low", 4, LOW)]
    await q.settle()
    await q.free(7)
    # a0 (first), then b and c before a's other three; low only when no high waits
    assert q.served == ["a0", "b0", "c0", "a1", "a2", "a3", "low"]
    await asyncio.gather(*tasks)


async def test_a_waiter_only_takes_an_upstream_it_can_use() -> None:
    q = Queued()
    tasks = [q.enqueue("high-other", 1, HIGH, on=(OTHER,)), q.enqueue("low-gpu", 2, LOW)]
    await q.settle()
    await q.free(1)
    assert q.served == ["low-gpu"]
    await q.free(1, OTHER)
    await asyncio.gather(*tasks)


async def test_a_lower_class_waits_at_most_the_age_boost_behind_higher_ones() -> None:
    q = Queued()
    low = q.enqueue("low", 1, LOW)
    await q.settle()
    highs = [q.enqueue(f"h{n}", 2, HIGH) for n in range(6)]
    await q.settle()
    q.clock.now += AGE_BOOST_S - 0.5  # not yet due: high first
    await q.free(2)
    assert q.served == ["h0", "h1"]
    q.clock.now += 0.5  # low has waited AGE_BOOST_S: it goes before the high ones
    await q.free(1)
    assert q.served == ["h0", "h1", "low"]
    # the high ones that arrived later, once due themselves, are served oldest first
    q.clock.now += AGE_BOOST_S
    late = q.enqueue("normal-late", 3, NORMAL)  # higher than none of them, not due
    await q.settle()
    await q.free(5)
    assert q.served[3:] == ["h2", "h3", "h4", "h5", "normal-late"]
    await asyncio.gather(low, late, *highs)


async def test_with_every_key_normal_the_order_is_the_fair_queues() -> None:
    q = Queued()
    tasks = [q.enqueue(f"a{n}", 1, NORMAL) for n in range(3)] + [q.enqueue("b0", 2, NORMAL)]
    await q.settle()
    q.clock.now += 10 * AGE_BOOST_S  # all overdue: one class keeps its own order
    await q.free(4)
    assert q.served == ["a0", "b0", "a1", "a2"]
    await asyncio.gather(*tasks)


async def test_a_client_that_leaves_leaves_its_class() -> None:
    q = Queued()
    leaving = q.enqueue("leaves", 1, HIGH)
    staying = q.enqueue("stays", 2, LOW)
    await q.settle()
    leaving.cancel()
    await q.settle()
    assert len(q.queue) == 1 and q.queue.waiting() == {"gpu": 1}
    q.clock.now += 2 * AGE_BOOST_S
    await q.free(1)
    assert q.served == ["stays"] and await staying is GPU
    assert q.released == []


async def test_a_waiter_of_any_class_times_out() -> None:
    q = Queued(timeout=0.05)
    with pytest.raises(ServiceUnavailable, match="UPSTREAM_QUEUE_TIMEOUT"):
        await q.enqueue("never", 1, HIGH)
    assert len(q.queue) == 0 and not q.queue.hand_over(GPU)
