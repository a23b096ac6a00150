"""The auth middleware: every route needs a valid key unless its handler is `@public`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from .appkeys import KEY_TABLE, PRINCIPAL
from .errors import Unauthorized
from .keytable import AuthError

_PUBLIC = "_aigateway_public"
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def public(handler: H) -> H:
    """Mark a handler as reachable without a key (health checks, the root probe)."""
    setattr(handler, _PUBLIC, True)
    return handler


def presented_key(request: web.Request) -> str:
    """The key from `Authorization: Bearer <key>`, or `x-api-key` (Anthropic clients)."""
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <API key>'")
        return token.strip()
    api_key = request.headers.get("x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip()
    raise Unauthorized("missing API key: send 'Authorization: Bearer <API key>'")


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Unknown paths and wrong methods fall through to their 404/405.
    if getattr(handler, _PUBLIC, False) or request.match_info.http_exception is not None:
        return await handler(request)
    try:
        request[PRINCIPAL] = request.app[KEY_TABLE].authenticate(presented_key(request))
    except AuthError as exc:
        raise Unauthorized(str(exc)) from None
    return await handler(request)
