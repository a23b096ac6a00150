"""The relay: one request in, the same request to an upstream, every response byte back.

The handler walks one request through its steps, each a function of its own: admit
(admit.py: the path, the key's limits), prepare (admit.py: the body, read once, and the
reservations it asks for), forward (forward.py: an upstream chosen, failing over), pump
(pump.py: every chunk as it arrives), settle (settle.py: what it used, the ledger
unwound once) and finish (pump.py: the bytes that complete the answer, after the
record). Bodies and responses pass unchanged; only headers are touched
(upstreamhttp.py). Answers for several upstreams at once are fanout.py's. With traces on
(usage/traces.py), _traced wraps the walk in the request's spans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ..errors import GatewayError, ServiceUnavailable
from ..http.appkeys import CONTEXT
from ..http.context import DIALECT
from ..protocol.routes import RelayRoute
from ..usage.traces import RequestTrace, Tracing
from .admit import admit, check_content_encoding, check_path, prepare, storage_full
from .exchange import Exchange
from .forward import forward
from .inflight import STOPPED, STOPPING, GatewayStopping, InFlightRequest, StoppedByAdmin
from .ledger import Ledger
from .pump import end_cut, finish
from .settle import settle
from .state import RELAY, RelayState

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def relay_handler(route: RelayRoute, app: web.Application) -> Handler:
    """The handler of one route: bound when the app is made, it serves with the relay's
    state, which exists only while the app runs."""

    async def relay(request: web.Request) -> web.StreamResponse:
        state = app[RELAY]
        tracing = state.tracing
        if tracing is None:  # (traces off: this check is all they cost)
            return await _relay(request, route, state, None)
        return await _traced(request, route, state, tracing)

    relay.__name__ = f"relay_{route.path.strip('/').split('/')[0]}"
    setattr(relay, DIALECT, route.dialect)
    return relay


async def _traced(
    request: web.Request, route: RelayRoute, relay: RelayState, tracing: Tracing
) -> web.StreamResponse:
    """_relay inside the request's span, which ends once its last byte is written, or
    the client left, or it failed (with the status its error is answered with)."""
    context = request[CONTEXT]
    principal = context.principal
    assert principal is not None
    trace = tracing.request(
        request.headers,
        request.method,
        relay.settings.client_prefix(route.native) + route.path,
        context.request_id,
        principal.prefix,  # (never the key)
        principal.user,
    )
    try:
        return await _relay(request, route, relay, trace)
    except GatewayError as exc:
        trace.failed(exc.status_in(route.dialect), exc.message)
        raise
    except web.HTTPException as exc:
        trace.failed(exc.status, exc.reason)
        raise
    except Exception as exc:
        trace.failed(500, type(exc).__name__)
        raise
    finally:
        trace.end(context.client_gone)


async def _relay(
    request: web.Request, route: RelayRoute, relay: RelayState, trace: RequestTrace | None
) -> web.StreamResponse:
    """Admit, read the body, forward and pump, settle: in that order, so that a key over
    its limits is refused before a byte of its body is read (and held). Every take goes
    into the request's one ledger as it is taken; the `finally` settles the request once,
    whatever ended it, and only then do the bytes that complete its response go out."""
    context = request[CONTEXT]
    principal = context.principal
    assert principal is not None  # the middleware authenticated every relayed request
    if route.checks_path:
        check_path(request, route, principal, relay.settings)
    coding = request.headers.get("Content-Encoding")
    if coding is not None:
        check_content_encoding(coding)
    if relay.usage.full:
        raise storage_full()
    ledger = Ledger()
    admitted = await admit(request, route, principal, relay, ledger)
    in_flight = ledger.take(
        InFlightRequest(relay.in_flight, asyncio.current_task(relay.loop), context, route)
    )
    exchange: Exchange | None = None  # made once the request is sent on
    try:
        exchange = await prepare(
            request, route, context, admitted, in_flight, relay, coding, ledger
        )
        if trace is not None:
            trace.admitted()
            exchange.trace = trace
        response, end = await forward(request, route, exchange, relay, ledger)
    except asyncio.CancelledError as cancelled:
        why = cancelled.args[:1]
        if why != (STOPPING,) and why != (STOPPED,):
            context.client_gone = True  # (the server cancels a handler whose client left)
            raise
        # A graceful stop or an admin's Stop ended a request still reading its body,
        # waiting in an upstream's queue or for Ollama's first byte: answer it, rather
        # than drop the connection.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        begun = exchange.response if exchange is not None else None
        if exchange is not None and begun is not None and begun.prepared:
            # Its answer had begun without an upstream's response to cut it at (a pull on
            # every Ollama, between two): ended as a cut stream is, not answered again.
            stop = StoppedByAdmin() if why == (STOPPED,) else GatewayStopping()
            await end_cut(begun, request, exchange, route, stop)
            return begun
        if exchange is not None:
            exchange.status = 503
        if why == (STOPPED,):
            if exchange is not None:
                exchange.cut_by = StoppedByAdmin.reason  # (charged as an early leave)
            raise _stopped() from None
        raise ServiceUnavailable("the gateway is shutting down", {"Retry-After": "5"}) from None
    finally:
        settle(request, route, relay, ledger, exchange)
    if end is not None:
        await finish(request, response, end, admitted.ticket_hold)
    return response


def _stopped() -> ServiceUnavailable:
    """The answer to a request an admin stopped before it was answered: not to be tried
    again by an SDK that retries a 503 on its own."""
    return ServiceUnavailable(
        "an admin of the gateway stopped this request", {"x-should-retry": "false"}
    )
