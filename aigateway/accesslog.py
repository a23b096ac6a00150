"""The outermost middleware: a request id, one access-log line per request, and JSON
errors for everything the gateway itself answers (never a traceback to the client)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import logs
from .appkeys import BYTES_OUT, CLIENT_GONE, MODEL, PRINCIPAL, RECEIVED_AT, REQUEST_ID, SETTINGS
from .errors import GatewayError, json_error

access_log = logging.getLogger("aigateway.access")
log = logging.getLogger("aigateway")

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"

# Request ids: a random prefix per process and a counter, unique and cheap to make.
_RUN_PREFIX = secrets.token_hex(3)
_request_numbers = itertools.count(1)


@web.middleware
async def access_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = f"{_RUN_PREFIX}-{next(_request_numbers):x}"
    request[REQUEST_ID] = request_id
    started = request[RECEIVED_AT] = time.perf_counter()
    response: web.StreamResponse | None = None
    error = ""
    try:
        response = await handler(request)
    except GatewayError as exc:
        error = exc.message
        response = json_error(exc.status, exc.message, exc.headers, _dialect(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_error_message(request, exc)
        response = json_error(exc.status, error, dialect=_dialect(request))
    except asyncio.CancelledError:
        request[CLIENT_GONE] = True
        _log_line(request, CLIENT_CLOSED, request.get(BYTES_OUT, 0), started, "client went away")
        raise
    except Exception:
        log.exception("rid=%s unhandled error on %s %s", request_id, request.method, request.path)
        error = f"internal gateway error (request id {request_id})"
        response = json_error(500, error, dialect=_dialect(request))
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    status = CLIENT_CLOSED if request.get(CLIENT_GONE) else response.status
    _log_line(request, status, _bytes_out(request, response), started, error)
    return response


def _dialect(request: web.Request) -> str:
    """Whose error shape the caller's SDK parses, from the path it called."""
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


def _bytes_out(request: web.Request, response: web.StreamResponse) -> int:
    """Response body bytes (what the relay counted, else what we are about to send)."""
    if BYTES_OUT in request:
        return request[BYTES_OUT]
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, bytes) else 0


def _log_line(request: web.Request, status: int, nbytes: int, started: float, error: str) -> None:
    sink = logs.access_sink
    if sink is None and not access_log.isEnabledFor(logging.INFO):
        return
    principal = request.get(PRINCIPAL)
    user, key_name = (principal.user, principal.name) if principal else ("-", "-")
    message = (
        f"rid={request[REQUEST_ID]} user={user} key={key_name} method={request.method}"
        f" path={request.path} model={request.get(MODEL) or '-'} status={status}"
        f" bytes={nbytes} ms={(time.perf_counter() - started) * 1000:.1f}"
        + (f' error="{error}"' if error else "")
    )
    if sink is not None:
        sink.write(message)
    else:
        access_log.info("%s", message)
