"""One relayed request's state: what admission decided (Admitted), and, once its body
is read and reserved for, the exchange with its upstream (Exchange), built complete by
the step that read it (admit.prepare)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ..errors import RequestTimeout
from ..http.context import RequestContext
from ..protocol.streams import UsageStripper
from ..records import KeyRecord, Price
from ..upstreams.cache import Keeper
from ..usage.traces import RequestTrace
from ..usage.writer import UsageTap
from .bodypace import BodyPace, SlowBody
from .inflight import InFlightRequest
from .ledger import AdmissionHold, BodyHold, TicketHold


class CountedUpload:
    """An upload passed on as it arrives, counting what really came (not what
    Content-Length claimed), and cut when it comes slower than BODY_MIN_RATE."""

    __slots__ = ("bytes_in", "content", "pace", "slow_body")

    def __init__(self, content: aiohttp.StreamReader, pace: BodyPace) -> None:
        self.content = content
        self.pace = pace
        self.bytes_in = 0
        self.slow_body: RequestTimeout | None = None  # cut for BODY_MIN_RATE

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        pace = self.pace
        watched = pace.watch(self.content)
        try:
            async for chunk in self.content.iter_any():
                self.bytes_in += len(chunk)
                yield chunk
        except SlowBody:
            self.slow_body = pace.refusal()  # (the upstream request fails with it)
            raise
        finally:
            pace.unwatch(watched)


class Admitted:
    """What admission decided: the rate-limit headers every answer carries, whether the
    key has limits (else no tokens to reserve), its hold on the key's limits (which the
    tokens reserved join), and the shared limits' ticket."""

    __slots__ = ("hold", "limited", "rate_headers", "ticket_hold")

    def __init__(
        self,
        rate_headers: tuple[tuple[str, str], ...],
        limited: bool,
        hold: AdmissionHold,
        ticket_hold: TicketHold | None,
    ) -> None:
        self.rate_headers = rate_headers
        self.limited = limited
        self.hold = hold
        self.ticket_hold = ticket_hold  # admitted by the limits gateways share


class Exchange:
    """One relayed request on its way, made once it is sent on: what it carries from
    admission and its body, and what its answer has brought so far (what the usage
    record and the settlement need). (Defaults of what its answer brings live on the
    class, so that making one per request sets only what is known.)"""

    status = 502
    first_byte_at: float | None = None
    response: web.StreamResponse | None = None
    upstream_name = ""  # the upstream that answered (metrics)
    cut_by: str | None = None  # why the stream was cut short (Ollama's side broke, a stop)
    trace: RequestTrace | None = None  # its spans, with traces on
    # The response cache (cached.py): the key its answer is kept under (None: it may not
    # be), the keeper of an answer looked for and not found, and whether it was found.
    cache_key: bytes | None = None
    keeper: Keeper | None = None
    cached = False

    def __init__(
        self,
        context: RequestContext,
        principal: KeyRecord,
        admitted: Admitted,
        in_flight: InFlightRequest,
        data: bytes | io.BytesIO | CountedUpload,
        bytes_in: int = 0,
        body_hold: BodyHold | None = None,
        price: Price | None = None,
        prompt_estimate: int = 0,
        stripper: UsageStripper | None = None,
    ) -> None:
        self.context = context
        self.principal = principal
        self.rate_headers = admitted.rate_headers
        self.in_flight = in_flight  # its place among the requests in flight
        in_flight.exchange = self  # (what Now reads of it: its upstream, its tokens so far)
        self.data: bytes | io.BytesIO | CountedUpload | None = data  # None once sent
        self.upload = data if isinstance(data, CountedUpload) else None
        self.bytes_in = bytes_in  # the body's bytes (an upload counts its own)
        self.body_hold = body_hold  # the body memory it holds, while read in memory
        self.price = price  # the model's price when the request started (None: free)
        self.prompt_estimate = prompt_estimate
        self.stripper = stripper  # takes out the usage the relay asked for on its own
        self.tap = UsageTap()

    def received(self) -> int:
        """The request body's bytes that came (an upload's, as they were passed on)."""
        upload = self.upload
        return self.bytes_in if upload is None else upload.bytes_in
