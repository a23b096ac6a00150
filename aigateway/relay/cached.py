"""A response cache hit on the relay's path (CACHE_SIZE; docs/cache.md): a kept answer
sent again as its upstream sent it (which requests may be answered so, and under which
key, is cachekeys.py's; a miss is kept by the pump's keeper). A hit goes through the
same pump as an upstream's answer (the usage tap counts it, the stream is stripped and
held back alike), reaches no upstream and takes no upstream slot; it was admitted by
the key's limits, holds its reservations and is settled like any request, its record
marked `cached` and its cost as CACHE_HIT_PRICE says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from ..protocol.routes import RelayRoute
from ..upstreams.cache import CACHE_HEADER, CachedAnswer, ResponseCache
from .exchange import Exchange
from .pump import pump, response_for

# The upstream a hit names in metrics, traces and the access line.
FROM_CACHE = "(cache)"


class Replay:
    """A kept answer, read as its upstream's was (what the pump reads of a response), and
    cut as its upstream's would be by a graceful stop or an admin's Stop (set_exception)."""

    status = 200

    def __init__(self, answer: CachedAnswer) -> None:
        self._answer = answer
        self._cut: BaseException | None = None
        self.reason = answer.reason
        self.headers = CIMultiDict(answer.headers)
        self.content_length = answer.length
        self.content_type = self.headers.get("Content-Type", "application/octet-stream")
        self.content = self  # (the pump reads `content.iter_any()`)

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._answer.chunks:
            if self._cut is not None:
                raise self._cut
            yield chunk

    def set_exception(self, exc: BaseException) -> None:
        """End the replay at its next chunk with `exc` (GatewayStopping, StoppedByAdmin),
        as an upstream's stream ends."""
        self._cut = exc

    def close(self) -> None:
        """Nothing to close: no connection was opened."""


async def kept_answer(answers: ResponseCache, key: bytes) -> CachedAnswer | None:
    """The answer kept under `key`; while an identical request's answer is on its way,
    that one once it came (None when none is on its way, or it was not kept and none is on
    its way since: this request then asks the upstream itself, and those still waiting
    wait for its answer). A burst of identical requests asks the upstream once; those
    that wait get the answer, a stream too, only once it came whole."""
    answer = answers.get(key)
    while answer is None:
        on_way = answers.on_way(key)
        if on_way is None:
            break
        await on_way.wait()
        answer = answers.after_waiting(key)
    return answer


async def replayed(
    answer: CachedAnswer, request: web.Request, route: RelayRoute, exchange: Exchange
) -> tuple[web.StreamResponse, bytes | None]:
    """Send a kept answer as its upstream sent it, through the pump: the response, and
    the bytes that complete it once the request is settled (None: the client left)."""
    replay = Replay(answer)
    exchange.status = 200
    exchange.cached = True
    exchange.upstream_name = FROM_CACHE
    exchange.context.upstream = FROM_CACHE  # (the access line says so, even with one)
    # A stop cuts it where an upstream's answer is cut: a task cancelled midway would be
    # answered 503 after its 200 had begun.
    exchange.in_flight.upstream = replay
    response = exchange.response = response_for(replay, request, exchange)
    response.headers[CACHE_HEADER] = "hit"
    try:
        await response.prepare(request)
        return response, await pump(replay, response, request, exchange, route)
    except ConnectionResetError:
        exchange.context.client_gone = True
        return response, None
