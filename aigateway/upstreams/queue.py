"""Waiting for room on busy upstreams, fairly: when every upstream that could serve a
request is at its max_concurrent, the request waits here, and each slot that frees goes
to the waiting keys in turn (a key with fifty requests waiting cannot starve a key with
one), for at most UPSTREAM_QUEUE_TIMEOUT; a client that leaves while waiting leaves the
queue."""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ..errors import ServiceUnavailable


class _Named(Protocol):
    """All the queue needs of an upstream (pool.Upstream): its name, for the counts."""

    @property
    def name(self) -> str: ...


Upstream = TypeVar("Upstream", bound=_Named)


class _Waiter(Generic[Upstream]):
    __slots__ = ("candidates", "future", "key_id")

    def __init__(self, key_id: int, candidates: Sequence[Upstream]) -> None:
        self.key_id = key_id
        self.candidates = candidates
        self.future: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()


class FairQueue(Generic[Upstream]):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Each waiting key's requests in arrival order, and the keys in the order they are
        # served: a key that was served goes to the back.
        self._keys: OrderedDict[int, deque[_Waiter[Upstream]]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._keys.values())

    def waiting(self) -> Counter[str]:
        """Requests waiting that each upstream could take (for /health/ollama, /metrics)."""
        return Counter(
            upstream.name
            for waiters in self._keys.values()
            for waiter in waiters
            for upstream in waiter.candidates
        )

    async def wait(
        self, key_id: int, candidates: Sequence[Upstream], release: Callable[[Upstream], None]
    ) -> Upstream:
        """A slot on one of `candidates`, taken for the caller when one frees; 503 after
        the timeout. A slot handed over just as the caller stops waiting is released."""
        waiter = _Waiter(key_id, candidates)
        self._keys.setdefault(key_id, deque()).append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), self.timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"every upstream that serves this model is busy; waited {self.timeout:g} s"
                " (UPSTREAM_QUEUE_TIMEOUT)",
                {"Retry-After": "5"},
            ) from None
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                release(waiter.future.result())  # handed over, but nobody will use it
            raise
        finally:
            self._forget(waiter)

    def _forget(self, waiter: _Waiter[Upstream]) -> None:
        waiters = self._keys.get(waiter.key_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._keys[waiter.key_id]
        if not waiter.future.done():
            waiter.future.cancel()

    def hand_over(self, upstream: Upstream) -> bool:
        """Give a slot that just freed on `upstream` to the next waiting request that can
        use it, taking the keys in turn; whether one took it."""
        for key_id, waiters in self._keys.items():
            for waiter in waiters:
                if upstream in waiter.candidates and not waiter.future.done():
                    waiter.future.set_result(upstream)
                    self._keys.move_to_end(key_id)
                    return True
        return False
