"""Waiting for room on busy upstreams, fairly and by priority: when every upstream that
could serve a request is at its max_concurrent, the request waits here, for at most
UPSTREAM_QUEUE_TIMEOUT; a client that leaves while waiting leaves the queue.

Each slot that frees goes to the highest priority class with a request waiting that can
use it, and within a class to the waiting keys in turn (a key with fifty requests waiting
cannot starve a key with one). The age boost keeps a lower class from waiting for ever:
a request that has waited AGE_BOOST_S is served before any that has not, the oldest of
them first. The queue is this gateway's own: with several gateways, each orders its own
waiters (they share no queue)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ..errors import ServiceUnavailable
from ..records import NORMAL_PRIORITY, PRIORITY_NAMES

# A waiter that has waited this long is served before any that has not (so a lower
# class waits at most this long behind higher ones, given a slot frees).
AGE_BOOST_S = 30.0


class _Named(Protocol):
    """All the queue needs of an upstream (pool.Upstream): its name, for the counts."""

    @property
    def name(self) -> str: ...


Upstream = TypeVar("Upstream", bound=_Named)


class _Waiter(Generic[Upstream]):
    __slots__ = ("candidates", "future", "key_id", "since")

    def __init__(self, key_id: int, candidates: Sequence[Upstream], since: float) -> None:
        self.key_id = key_id
        self.candidates = candidates
        self.since = since
        self.future: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()


class _Class(Generic[Upstream]):
    """The waiters of one priority class: each key's requests in arrival order, the keys
    in the order they are served (a key that was served goes to the back), and every
    waiter in arrival order (for the age boost; ones that left are dropped lazily)."""

    __slots__ = ("arrivals", "keys")

    def __init__(self) -> None:
        self.keys: OrderedDict[int, deque[_Waiter[Upstream]]] = OrderedDict()
        self.arrivals: deque[_Waiter[Upstream]] = deque()

    def oldest(self) -> _Waiter[Upstream] | None:
        arrivals = self.arrivals
        while arrivals and arrivals[0].future.done():
            arrivals.popleft()
        return arrivals[0] if arrivals else None

    def next_for(self, upstream: Upstream) -> _Waiter[Upstream] | None:
        """The next waiter, keys in turn, that can use `upstream`; its key goes last."""
        for key_id, waiters in self.keys.items():
            for waiter in waiters:
                if upstream in waiter.candidates and not waiter.future.done():
                    self.keys.move_to_end(key_id)
                    return waiter
        return None


class FairQueue(Generic[Upstream]):
    def __init__(
        self,
        timeout: float,
        age_boost: float = AGE_BOOST_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.age_boost = age_boost
        self._clock = clock
        # By class, lowest first (the index is the stored priority), and highest first.
        self._classes: tuple[_Class[Upstream], ...] = tuple(_Class() for _ in PRIORITY_NAMES)
        self._highest_first = self._classes[::-1]
        self._busy = 0  # classes with a waiter: with one, the age boost has nothing to do

    def __len__(self) -> int:
        return sum(len(w) for cls in self._classes for w in cls.keys.values())

    def waiting(self) -> Counter[str]:
        """Requests waiting that each upstream could take (for /health/ollama, /metrics)."""
        return Counter(
            upstream.name
            for cls in self._classes
            for waiters in cls.keys.values()
            for waiter in waiters
            for upstream in waiter.candidates
        )

    async def wait(
        self,
        key_id: int,
        candidates: Sequence[Upstream],
        release: Callable[[Upstream], None],
        priority: int = NORMAL_PRIORITY,
    ) -> Upstream:
        """A slot on one of `candidates`, taken for the caller when one frees; 503 after
        the timeout. A slot handed over just as the caller stops waiting is released."""
        waiter = _Waiter(key_id, candidates, self._clock())
        cls = self._classes[priority]
        if not cls.keys:
            self._busy += 1
        cls.keys.setdefault(key_id, deque()).append(waiter)
        cls.arrivals.append(waiter)
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
            self._forget(cls, waiter)

    def _forget(self, cls: _Class[Upstream], waiter: _Waiter[Upstream]) -> None:
        waiters = cls.keys.get(waiter.key_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del cls.keys[waiter.key_id]
                if not cls.keys:
                    self._busy -= 1
        if not waiter.future.done():
            waiter.future.cancel()
        cls.oldest()  # drops the waiters that left from the head (amortised O(1))

    def hand_over(self, upstream: Upstream) -> bool:
        """Give a slot that just freed on `upstream` to the next waiting request that can
        use it (the oldest past the age boost, else by class, keys in turn); whether one
        took it. Costs O(classes) beyond the search within a class."""
        waiter = self._overdue(upstream) if self._busy > 1 else None
        if waiter is None:
            for cls in self._highest_first:
                if cls.keys and (waiter := cls.next_for(upstream)) is not None:
                    break
            else:
                return False
        waiter.future.set_result(upstream)
        return True

    def _overdue(self, upstream: Upstream) -> _Waiter[Upstream] | None:
        """The oldest waiter that has waited the age boost and can use `upstream`, taken
        from the head of each class; None when there is none. (Asked only when several
        classes wait: within one, its own order is the order, and costs no clock.)"""
        due = self._clock() - self.age_boost
        chosen: tuple[_Class[Upstream], _Waiter[Upstream]] | None = None
        for cls in self._classes:
            oldest = cls.oldest() if cls.keys else None
            if (
                oldest is not None
                and oldest.since <= due
                and upstream in oldest.candidates
                and (chosen is None or oldest.since < chosen[1].since)
            ):
                chosen = (cls, oldest)
        if chosen is None:
            return None
        cls, waiter = chosen
        cls.keys.move_to_end(waiter.key_id)
        return waiter
