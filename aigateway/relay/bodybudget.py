"""The request-body memory: what all requests together, and each key, may hold.

MAX_BODY_SIZE bounds one body; MAX_BODY_MEMORY bounds the bytes all bodies hold at once,
counted as they arrive (a body declaring 90 MB that sends ten bytes holds ten bytes).
MAX_BODY_MEMORY_PER_KEY bounds one key's part, so that one key's bodies, however many,
cannot take the memory every other key needs.

A key's part is counted by what its bodies will hold: a body with a declared length
commits that length to its key before its first byte is read (its key may not start
more bodies than its part can finish), else it commits its bytes as they come. So the
bodies of one key that have started can always finish, and never wait on one another.

Whoever cannot have its bytes at once waits in its key's queue; the queues are served in
turn (round-robin across keys), each key's in order, so that twenty waiting bodies of
one key do not stand before the one of another. A key waiting on its own part holds up
nobody else; one waiting for MAX_BODY_MEMORY gets the next bytes given back before any
newcomer. A body waits at most `wait_s` in all, and a wait for MAX_BODY_MEMORY (which
other keys' bodies hold) at most `whole_wait_s`, then is refused with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ..errors import Refused, ServiceUnavailable

WAIT_S = 10.0  # the longest one body waits for memory, in all
WHOLE_WAIT_S = 2.0  # the longest a wait for MAX_BODY_MEMORY lasts (others hold it)

WHOLE = "MAX_BODY_MEMORY"
PER_KEY = "MAX_BODY_MEMORY_PER_KEY"


class _Waiter:
    __slots__ = ("actual", "commit", "future", "granted")

    def __init__(self, actual: int, commit: int, future: asyncio.Future[None]) -> None:
        self.actual = actual  # bytes of memory it needs now
        self.commit = commit  # bytes of its key's part it needs
        self.future = future
        self.granted = False


class BodyBudget:
    def __init__(
        self,
        capacity: int,
        per_key: int | None = None,
        wait_s: float = WAIT_S,
        whole_wait_s: float = WHOLE_WAIT_S,
    ) -> None:
        self.capacity = capacity
        self.per_key = capacity if per_key is None else per_key
        self.wait_s = wait_s
        self.whole_wait_s = whole_wait_s
        self.held = 0
        self.peak = 0  # the most ever held at once, for tests and the curious
        self._parts: dict[int, int] = {}  # key id -> bytes of its part in use (none: absent)
        self._queues: dict[int, deque[_Waiter]] = {}  # key id -> its waiters; in turn order
        self._blocked = False  # a turn waits for MAX_BODY_MEMORY: newcomers queue behind it

    def parts(self) -> dict[int, int]:
        """Each key's part in use (key id -> bytes held or committed), for tests and the
        curious."""
        return dict(self._parts)

    def try_take(self, key: int, actual: int, commit: int) -> bool:
        """Take `actual` bytes of memory and `commit` bytes of the key's part if both are
        free now and nobody waits before it (the usual case: no await, no allocation).
        Before it: a turn waiting for MAX_BODY_MEMORY, or for a new body, its own key's."""
        if self._queues and (self._blocked or (commit and key in self._queues)):
            return False
        if self.held + actual > self.capacity:
            return False
        if commit:
            mine = self._parts.get(key, 0) + commit
            if mine > self.per_key:
                return False
            self._parts[key] = mine
        held = self.held = self.held + actual
        if held > self.peak:
            self.peak = held
        return True

    async def take(self, key: int, actual: int, commit: int, deadline: float) -> bool:
        """Take as try_take does, waiting in the key's queue (until `deadline`, a
        time.monotonic()) when it cannot; refused with 503 when the time is up. True when
        it waited."""
        if self.try_take(key, actual, commit):
            return False
        if actual > self.capacity:
            raise _refusal(WHOLE, self.capacity)
        if commit > self.per_key:
            raise _refusal(PER_KEY, self.per_key)
        waiter = _Waiter(actual, commit, asyncio.get_running_loop().create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(waiter)
        self._serve()
        if waiter.future.done():  # its turn came at once (only others' own parts waited)
            return False
        left = deadline - time.monotonic()
        if self._short(key, commit) == WHOLE and left > self.whole_wait_s:
            left = self.whole_wait_s  # others hold it: do not keep the client long
        try:
            async with asyncio.timeout(left):
                await waiter.future
        except BaseException as exc:
            if waiter.granted:  # given its bytes just as it was timed out or cancelled
                if isinstance(exc, TimeoutError):
                    return True
                self.give_back(key, actual, commit)
                raise
            self._drop(key, waiter)
            if isinstance(exc, TimeoutError):
                short = self._short(key, commit)
                raise _refusal(short, self.capacity if short == WHOLE else self.per_key) from None
            raise
        return True

    def give_back(self, key: int, actual: int, commit: int) -> None:
        if actual:
            left = self.held - actual
            self.held = left if left > 0 else 0  # (max() costs five times this)
        if commit:
            mine = self._parts.get(key, 0) - commit
            if mine > 0:
                self._parts[key] = mine
            else:
                self._parts.pop(key, None)
        if self._queues:
            self._serve()

    def _serve(self) -> None:
        """Give waiting turns what is free, one key after another."""
        queues = self._queues
        self._blocked = False
        while queues:
            for key, queue in queues.items():
                waiter = _next(queue)
                if waiter.commit and self._parts.get(key, 0) + waiter.commit > self.per_key:
                    continue  # waits on its own key's bodies: holds up nobody
                if self.held + waiter.actual > self.capacity:
                    self._blocked = True  # the next bytes given back are its
                    return
                queue.remove(waiter)
                del queues[key]
                if queue:
                    queues[key] = queue  # its next turn comes after every other key's
                if not waiter.future.done():  # (else it was cancelled, and is gone)
                    self._grant(key, waiter)
                break
            else:
                return  # every waiting key waits on its own part

    def _short(self, key: int, commit: int) -> str:
        """The setting a waiting turn waits on: its key's share, else the whole memory."""
        if commit and self._parts.get(key, 0) + commit > self.per_key:
            return PER_KEY
        return WHOLE

    def _grant(self, key: int, waiter: _Waiter) -> None:
        if waiter.commit:
            self._parts[key] = self._parts.get(key, 0) + waiter.commit
        held = self.held = self.held + waiter.actual
        if held > self.peak:
            self.peak = held
        waiter.granted = True
        waiter.future.set_result(None)

    def _drop(self, key: int, waiter: _Waiter) -> None:
        queue = self._queues.get(key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[key]
        if self._queues:
            self._serve()  # (it may have been the turn the others waited behind)


def _next(queue: deque[_Waiter]) -> _Waiter:
    """A key's next turn: a started body's next bytes (it commits nothing, and
    finishing it frees the key's part) before a new body's start."""
    for waiter in queue:
        if not waiter.commit:
            return waiter
    return queue[0]


def _refusal(setting: str, limit: int) -> ServiceUnavailable:
    whose = "this key's request bodies are" if setting == PER_KEY else "the gateway is"
    return ServiceUnavailable(
        f"{whose} holding as much request-body memory as allowed ({limit} bytes, {setting});"
        " try again shortly",
        {"Retry-After": "1"},
        Refused.BODY_MEMORY_FULL,
    )
