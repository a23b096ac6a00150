"""The relayed requests in progress, so that a graceful stop can let them finish and then
end the rest the way each one's dialect signals an error, within SHUTDOWN_TIMEOUT; and
so that an admin sees them (the dashboard's Now: relay/now.py) and may stop one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from ..http.context import RequestContext
    from ..protocol.routes import RelayRoute
    from ..usage.writer import UsageTap
    from .ledger import Outcome

log = logging.getLogger("aigateway")

# The message a graceful stop cancels a request's task with (InFlightRequest.stop).
STOPPING = "aigateway: the gateway is stopping"
# The message an admin's Stop cancels one not answering yet with (InFlightRequest.stop_by).
STOPPED = "aigateway: an admin stopped this request"


class Progress(Protocol):
    """What Now reads of a request's exchange (exchange.py), once its body is read."""

    first_byte_at: float | None
    response: web.StreamResponse | None
    upstream_name: str
    tap: UsageTap


class _Cuttable(Protocol):
    def set_exception(self, exc: BaseException) -> None: ...


class Answering(Protocol):
    """An answer on its way, which a stop cuts: an upstream's response, or one the
    response cache kept, replayed."""

    @property
    def content(self) -> _Cuttable: ...


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

    reason = "gateway stopping"  # (the log's word, and the record's cut)
    message = "aigateway: the gateway is shutting down"  # what the client reads


class StoppedByAdmin(GatewayStopping):
    """Raised into a relayed stream when an admin stops it (the dashboard's Now)."""

    reason = "stopped by an admin"
    message = STOPPED


class InFlightRequest:
    """A relayed request's place among those in flight: a take in its ledger (given back
    when it ends); what Now shows of it (its context, route and, once its body is read,
    exchange); and how a graceful stop or an admin ends it: a response being relayed is
    cut the way its dialect signals an error (the upstream connection closed); one not
    answering yet is cancelled (with STOPPING, answered 503; with STOPPED, answered 503
    saying so), which takes it out of an upstream's queue if it waits there."""

    __slots__ = (
        "context", "exchange", "in_flight", "queued", "route", "stopped_by", "task", "upstream",
    )  # fmt: skip
    by_record = False

    def __init__(
        self,
        in_flight: InFlight,
        task: asyncio.Task[Any] | None,
        context: RequestContext,
        route: RelayRoute,
    ) -> None:
        self.in_flight = in_flight
        self.task = task  # the handler's
        self.context = context
        self.route = route
        self.exchange: Progress | None = None  # set by the Exchange, once the body is read
        self.upstream: Answering | None = None  # once an upstream (or the cache) answers
        self.queued = False  # waiting in the upstreams' queue (forward.py)
        self.stopped_by: str | None = None  # the admin who stopped it ("user/key name")
        in_flight.requests.add(self)  # (an attribute, not a call: the hot path)

    def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.content.set_exception(GatewayStopping())
        elif self.task is not None:
            self.task.cancel(STOPPING)

    def stop_by(self, who: str) -> None:
        """An admin's Stop: end it as a client that left would (charged as an early
        leave), its record naming `who`. A second Stop changes nothing."""
        if self.stopped_by is not None:
            return
        self.stopped_by = who
        if self.upstream is not None:
            self.upstream.content.set_exception(StoppedByAdmin())
        elif self.task is not None:
            self.task.cancel(STOPPED)

    def release(self, outcome: Outcome) -> None:
        self.in_flight.discard(self)
        # Out of the set, it is read no more: let go of what it points to. The exchange
        # points back here, and that cycle would keep the request's objects (its
        # response, its upstream's, its task) for the garbage collector to find, about
        # 2% of a request's instructions, instead of freeing them as the request ends.
        self.exchange = self.upstream = self.task = None
