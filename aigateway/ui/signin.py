"""Signing in to the dashboard and out: a key exchanged once for a session cookie
(http/sessions.py finds the session again on each request). Each attempt counts against
the client's address and the key (http/signinlimit.py), good or not."""

from __future__ import annotations

import secrets
import time

import orjson
from aiohttp import web

from ..admin.views import key_view
from ..errors import BadRequest, Refused, TooManyRequests
from ..http.appkeys import CONTEXT, KEY_TABLE, SETTINGS, SIGN_IN_LIMITS, STORE
from ..http.auth import key_record
from ..http.clientaddress import client_address, client_view
from ..http.expect import send_continue
from ..http.sessions import COOKIE, check_same_origin, session_digest

MAX_SIGN_IN_BYTES = 4096


async def sign_in(request: web.Request) -> web.Response:
    """`{"key": "aig_..."}` -> the key's view, and the session cookie. Each attempt,
    good or not, counts against its client address and, when the key is one the table
    holds (even revoked), against that key (signinlimit.py)."""
    check_same_origin(request)
    limits = request.app[SIGN_IN_LIMITS]
    _within(limits.take_address(client_address(request), time.monotonic()), "address")
    await send_continue(request)
    token = await _presented_key(request)
    key_id = request.app[KEY_TABLE].known_id(token)
    if key_id is not None:
        _within(limits.take_key(key_id, time.monotonic()), "key")
    record = request[CONTEXT].principal = await key_record(request, token)
    settings = request.app[SETTINGS]
    session_id = secrets.token_urlsafe(32)
    await request.app[STORE].create_session(
        session_digest(session_id), record.id, time.time() + settings.session_max_hours * 3600
    )
    response = web.Response(body=orjson.dumps({"key": key_view(record)}))
    response.content_type = "application/json"
    response.set_cookie(
        COOKIE,
        session_id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request, settings.session_cookie_secure),
        max_age=settings.session_max_hours * 3600,
    )
    return response


def _within(wait: int, subject: str) -> None:
    """Refuse a sign-in when its address or key has used up its minute (`wait` > 0)."""
    if wait:
        raise TooManyRequests(
            f"too many sign-ins from this {subject}: try again in {wait} s",
            {"Retry-After": str(wait)},
            reason=Refused.SIGN_IN_LIMIT,
        )


async def _presented_key(request: web.Request) -> str:
    """The key a sign-in body `{"key": ...}` holds."""
    raw = await request.content.read(MAX_SIGN_IN_BYTES + 1)
    if len(raw) > MAX_SIGN_IN_BYTES:
        raise BadRequest("the sign-in body is too large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("key"), str):
        raise BadRequest('send {"key": "<API key>"}')
    key: str = body["key"].strip()
    return key


def _secure(request: web.Request, setting: str) -> bool:
    """Whether the cookie is sent over HTTPS only: SESSION_COOKIE_SECURE, where "auto"
    means when the client called over HTTPS (this gateway's own TLS, or a proxy in
    TRUSTED_PROXIES saying so in X-Forwarded-Proto)."""
    return setting == "true" or (setting == "auto" and client_view(request).scheme == "https")


async def sign_out(request: web.Request) -> web.Response:
    check_same_origin(request)
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await request.app[STORE].end_session(session_digest(session_id))
    response = web.Response(body=b'{"signed_out": true}', content_type="application/json")
    response.del_cookie(COOKIE, path="/")
    return response
