"""A cap on the request-body bytes held in memory by all requests together.

MAX_BODY_SIZE bounds one body; this bounds their sum (MAX_BODY_MEMORY), so a few clients
sending large bodies at once cannot make the gateway hold gigabytes. A request takes its
bytes before it reads them (all at once when it declares a length, else as they arrive)
and gives them back once Ollama has the body. When the cap is reached a request waits,
up to WAIT_S seconds, for others to give bytes back, then is refused with 503.
"""

from __future__ import annotations

import asyncio

from .errors import ServiceUnavailable

WAIT_S = 10.0


class BodyBudget:
    def __init__(self, capacity: int, wait_s: float = WAIT_S) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.held = 0
        self.peak = 0  # the most ever held at once, for tests and the curious
        self._freed = asyncio.Event()
        self._waiting = 0  # requests waiting in take(): only they need waking

    def try_take(self, nbytes: int) -> bool:
        """Take `nbytes` if they are free now (the usual case, with no await at all)."""
        if self.held + nbytes > self.capacity:
            return False
        self.held += nbytes
        if self.held > self.peak:
            self.peak = self.held
        return True

    async def take(self, nbytes: int) -> None:
        """Take `nbytes` of the budget, waiting for others to give some back if needed."""
        if self.try_take(nbytes):
            return
        if nbytes > self.capacity:
            raise _refusal(self.capacity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while self.held + nbytes > self.capacity:
            left = deadline - loop.time()
            if left <= 0:
                raise _refusal(self.capacity)
            self._freed.clear()
            self._waiting += 1
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                raise _refusal(self.capacity) from None
            finally:
                self._waiting -= 1
        self.try_take(nbytes)

    def give_back(self, nbytes: int) -> None:
        if nbytes:
            left = self.held - nbytes
            self.held = left if left > 0 else 0  # (max() costs five times this)
            if self._waiting:
                self._freed.set()


def _refusal(capacity: int) -> ServiceUnavailable:
    return ServiceUnavailable(
        "the gateway is holding as many request bodies as it may"
        f" ({capacity} bytes, MAX_BODY_MEMORY); try again shortly",
        {"Retry-After": "1"},
    )
