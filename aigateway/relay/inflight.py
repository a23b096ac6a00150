"""The relayed requests in progress, so that a graceful stop can let them finish and then
end the rest the way each one's dialect signals an error, within SHUTDOWN_TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..upstreams.transport import Response
    from .ledger import Outcome

log = logging.getLogger("aigateway")

# The message a graceful stop cancels a request's task with (InFlightRequest.stop).
STOPPING = "aigateway: the gateway is stopping"


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


class GatewayStopping(Exception):
    """Raised into a relayed stream when a graceful stop ends it."""


class InFlightRequest:
    """A relayed request's place among those in flight: a take in its ledger (given back
    when it ends), and how a graceful stop ends it: a response being relayed is cut the
    way its dialect signals an error; one not begun yet is cancelled with STOPPING, and
    answered 503."""

    __slots__ = ("in_flight", "task", "upstream")
    by_record = False

    def __init__(self, in_flight: InFlight, task: asyncio.Task[Any] | None) -> None:
        self.in_flight = in_flight
        self.task = task  # the handler's
        self.upstream: Response | None = None  # once an upstream answers
        in_flight.requests.add(self)  # (an attribute, not a call: the hot path)

    def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.content.set_exception(GatewayStopping())
        elif self.task is not None:
            self.task.cancel(STOPPING)

    def release(self, outcome: Outcome) -> None:
        self.in_flight.discard(self)
