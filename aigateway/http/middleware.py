"""The one middleware: everything the gateway does around each handler.

In order: a request id and the request's context, CORS preflights (when CORS_ORIGINS is
set), the key check for every handler not marked `@public`, JSON errors for whatever the
gateway itself answers (never a traceback to the client), and one access line. One layer
rather than one per concern: aiohttp calls each middleware through a partial and a
coroutine of its own on every request, which cost the relay more than any of these jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..access.keytable import UnknownKeyError
from ..errors import GatewayError, Refused, Unauthorized, json_error
from .accesslog import CLIENT_CLOSED, log_access
from .appkeys import CONTEXT, METRICS, REFUSALS, SETTINGS
from .auth import (
    RefusedKey,
    authenticate,
    authenticate_after_a_look,
    is_public,
    presented_prefix,
)
from .context import DIALECT, RequestContext
from .cors import preflight_response
from .sessions import session_principal, signed_in_browser

log = logging.getLogger("aigateway")

# Request ids: a random prefix per process and a counter, unique and cheap to make.
_RUN_PREFIX = secrets.token_hex(3)
_request_numbers = itertools.count(1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    context = request[CONTEXT] = RequestContext(
        f"{_RUN_PREFIX}-{next(_request_numbers):x}", time.perf_counter()
    )
    error = ""
    reason: str | None = None
    closing = False
    try:
        preflight = preflight_response(request)
        if preflight is not None:
            response = preflight
        else:
            # Unknown paths and wrong methods fall through to their 404/405 without a key.
            if not is_public(handler) and request.match_info.http_exception is None:
                try:
                    context.principal = authenticate(request)
                except UnknownKeyError:
                    context.principal = await authenticate_after_a_look(request)
                except Unauthorized:
                    # No key header: a signed-in dashboard (a session cookie) may stand in.
                    if not signed_in_browser(request):
                        raise
                    context.principal = await session_principal(request)
            response = await handler(request)
    except GatewayError as exc:
        error, reason = exc.message, exc.reason
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.refused(exc)
        if reason is not None:
            # Counted against the caller, or the key it sent that does not work now.
            key = exc.key if isinstance(exc, RefusedKey) else context.principal
            request.app[REFUSALS].count(reason, key)
            if reason is Refused.UNKNOWN_KEY:  # (counted without it: the log names it)
                error = f"{error} ({presented_prefix(request)})"
        dialect = _dialect(request)
        response = json_error(
            exc.status_in(dialect), exc.message, exc.headers, dialect, exc.billing, reason
        )
        if exc.closes_connection:
            response.force_close()  # (says Connection: close)
            closing = True
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_error_message(request, exc)
        response = json_error(exc.status, error, dialect=_dialect(request))
    except asyncio.CancelledError:
        context.client_gone = True
        log_access(request, context, CLIENT_CLOSED, context.bytes_out or 0, "client went away")
        raise
    except Exception:
        log.exception(
            "rid=%s unhandled error on %s %s", context.request_id, request.method, request.path
        )
        error = f"internal gateway error (request id {context.request_id})"
        response = json_error(500, error, dialect=_dialect(request))
    if not response.prepared:
        response.headers["X-Request-Id"] = context.request_id
    status = CLIENT_CLOSED if context.client_gone else response.status
    log_access(request, context, status, _bytes_out(context, response), error, reason)
    if closing:
        await _send_and_close(request, response)
    return response


async def _send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer, then close the connection at once: the server would otherwise
    linger, reading the rest of a request body that is not coming."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # (the transport sends what it has, then closes)


def _dialect(request: web.Request) -> str:
    """Whose error shape the caller's SDK parses: its route's, decided once in the route
    table (relay_handler marks its handler with it); for a path no relayed route serves
    (a 404, a 405), the dialect of the prefix it called."""
    dialect = getattr(request.match_info.handler, DIALECT, None)
    if dialect is not None:
        return str(dialect)
    v1 = request.app[SETTINGS].v1_path
    path = request.path
    if path == v1 + "/messages" or path.startswith(v1 + "/messages/"):
        return "anthropic"
    if path == v1 or path.startswith(v1 + "/"):
        return "openai"
    return "ollama"


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such route: {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    return exc.reason


def _bytes_out(context: RequestContext, response: web.StreamResponse) -> int:
    """Response body bytes (what the relay counted, else what we are about to send)."""
    if context.bytes_out is not None:
        return context.bytes_out
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, bytes) else 0
