"""The gateway's own errors, answered as Ollama answers its errors: `{"error": "..."}`.

    GatewayError (status 500)
    ├── Unauthorized (401, with WWW-Authenticate: Bearer)
    ├── PayloadTooLarge (413)
    ├── UpstreamUnreachable (502)
    └── UpstreamTimeout (504)

aiohttp's own HTTP exceptions (404 unknown path, 405 wrong method, 413 from the body
limit) are rendered the same way by the access middleware.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
from aiohttp import web


class GatewayError(Exception):
    status: ClassVar[int] = 500
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(GatewayError):
    status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="aigateway"'}


class PayloadTooLarge(GatewayError):
    status = 413


class UpstreamUnreachable(GatewayError):
    status = 502


class UpstreamTimeout(GatewayError):
    status = 504


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )
