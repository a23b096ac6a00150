"""Who is calling: the key a request presents, checked against the in-memory key table.

Every route needs a valid key unless its handler is `@public`; the gateway middleware
calls `authenticate` before the handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from ..access.keytable import AuthError, KeyTable, UnknownKeyError
from ..db.keys import display_prefix
from ..errors import Refused, Unauthorized
from ..records import KeyRecord
from .appkeys import CONTEXT, KEY_TABLE

_PUBLIC = "_aigateway_public"
_MISSING_KEY = "missing API key: send 'Authorization: Bearer <API key>'"
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


class RefusedKey(Unauthorized):
    """A key the table holds that does not work now (revoked, expired, its user
    disabled): its refusal is counted against that key and its user."""

    def __init__(self, error: AuthError, key: KeyRecord) -> None:
        super().__init__(str(error), reason=error.reason)
        self.key = key


def refused(error: AuthError) -> Unauthorized:
    """The 401 an AuthError answers, naming the key when the table holds it."""
    if error.key is not None:
        return RefusedKey(error, error.key)
    return Unauthorized(str(error), reason=error.reason)


def public(handler: H) -> H:
    """Mark a handler as reachable without a key (health checks, the root probe)."""
    setattr(handler, _PUBLIC, True)
    return handler


def is_public(handler: Callable[..., object]) -> bool:
    return getattr(handler, _PUBLIC, False)


def presented_key(request: web.Request) -> str:
    """The key from `Authorization: Bearer <key>`, or `x-api-key` (Anthropic clients)."""
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "malformed Authorization header: expected 'Bearer <API key>'",
                reason=Refused.MALFORMED_KEY,
            )
        return token.strip()
    api_key = request.headers.get("x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip()
    raise Unauthorized(_MISSING_KEY, reason=Refused.MISSING_KEY)


def presented_prefix(request: web.Request) -> str:
    """The display prefix (`aig_` and 8 characters, what key listings show) of the key
    the request presented: what the access line names an unknown key by, since refusal
    counts lump every unknown key together."""
    try:
        return display_prefix(presented_key(request))
    except Unauthorized:
        return "-"


def authenticate(request: web.Request) -> KeyRecord:
    """The record of the key the request presents, or Unauthorized saying why not;
    UnknownKeyError for a well-formed key the table does not hold (yet)."""
    try:
        return request.app[KEY_TABLE].authenticate(presented_key(request))
    except UnknownKeyError:
        raise
    except AuthError as exc:
        raise refused(exc) from None


async def authenticate_after_a_look(request: web.Request) -> KeyRecord:
    """A second try for a well-formed unknown key, once the database has been looked at
    again: a key made by the CLI a moment ago works on its first request."""
    table = request.app[KEY_TABLE]
    await table.look_again()
    return _checked(table, presented_key(request))


async def key_record(request: web.Request, token: str) -> KeyRecord:
    """The record of a key given some other way than a header (the dashboard's sign-in),
    with the same second look for a well-formed key the table does not hold yet."""
    table = request.app[KEY_TABLE]
    try:
        return table.authenticate(token)
    except UnknownKeyError:
        await table.look_again()
    except AuthError as exc:
        raise refused(exc) from None
    return _checked(table, token)


def _checked(table: KeyTable, token: str) -> KeyRecord:
    try:
        return table.authenticate(token)
    except AuthError as exc:
        raise refused(exc) from None


def principal(request: web.Request) -> KeyRecord:
    """The authenticated caller of a handler that is not public."""
    record = request[CONTEXT].principal
    if record is None:  # only a @public handler runs without one
        raise Unauthorized(_MISSING_KEY, reason=Refused.MISSING_KEY)
    return record
