"""What the gateway answers, and logs, for a request aiohttp cannot parse.

aiohttp's parser errors quote the offending bytes, and its RequestHandler.handle_error
puts that text into both its log line ("Error handling request", with the exception)
and the 400 body. When the bad byte sits in or after an `Authorization` or `x-api-key`
header, that is the key, in the log and back on the wire. aiohttp has no hook for it, so
`install()` wraps handle_error once: a request that never became one (any status but
500) gets our JSON error naming only the kind of fault, and one log line without the
bytes. A test pins this against aiohttp's own behaviour, so an upgrade that changes it
fails loudly rather than leaking.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("aigateway")

_original = RequestHandler.handle_error


def _handle_error(
    self: RequestHandler,
    request: Any,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    if status == 500:  # an error inside a handler: the gateway's middleware shapes those
        return _original(self, request, status, exc, message)
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    log.warning(
        "malformed request from %s refused: %d %s (%s)",
        request.remote,
        status,
        reason,
        type(exc).__name__ if exc is not None else "no detail",
    )
    response = web.Response(
        status=status,
        body=orjson.dumps({"error": f"malformed HTTP request ({status} {reason})"}),
        content_type="application/json",
    )
    response.force_close()
    return response


def install() -> None:
    """Idempotent: every app (the server's, the tests') gets the same protection."""
    RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
