"""The relayed requests in progress, so that a graceful stop can let them finish and then
end the rest the way each one's dialect signals an error, within SHUTDOWN_TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger("aigateway")


class Stoppable(Protocol):
    def stop(self) -> None: ...


class InFlight:
    def __init__(self) -> None:
        # Public so that the relay adds to it without a method call on every request.
        self.requests: set[Stoppable] = set()
        self._idle: asyncio.Event | None = None  # made by drain(), set when none are left

    def __len__(self) -> int:
        return len(self.requests)

    def discard(self, request: Stoppable) -> None:
        self.requests.discard(request)
        if self._idle is not None and not self.requests:
            self._idle.set()

    async def drain(self, grace_s: float) -> None:
        """Wait up to `grace_s` for open requests to finish, then stop those left."""
        self._idle = asyncio.Event()
        if self.requests:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        if self.requests:
            log.warning(
                "stopping: ending %d open request(s) still running after %g s",
                len(self.requests),
                grace_s,
            )
            for request in list(self.requests):
                request.stop()
