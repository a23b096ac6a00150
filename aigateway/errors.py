"""The gateway's own errors, answered as Ollama answers its errors: `{"error": "..."}`.

    GatewayError (status 500)
    ├── BadRequest (400)
    ├── Unauthorized (401, with WWW-Authenticate: Bearer)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── TooManyRequests (429, with Retry-After and X-RateLimit-*)
    ├── UpstreamUnreachable (502)
    └── UpstreamTimeout (504)

aiohttp's own HTTP exceptions (404 unknown path, 405 wrong method, 413 from the body
limit) are rendered the same way by the access middleware.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import orjson
from aiohttp import web


class GatewayError(Exception):
    status: ClassVar[int] = 500
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = {**self.default_headers, **(headers or {})}


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": 'Bearer realm="aigateway"'}


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class TooManyRequests(GatewayError):
    status = 429


class Conflict(GatewayError):
    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class UpstreamUnreachable(GatewayError):
    status = 502


class UpstreamTimeout(GatewayError):
    status = 504


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )
