"""Dashboard sessions: a key exchanged once for a random id in an HttpOnly cookie.

The browser never keeps the key: `POST {UI_PATH}/session` (ui/signin.py) takes it once
and answers with a cookie (HttpOnly, SameSite=Strict, Secure under HTTPS) holding 32
random bytes, of which the database keeps only the SHA-256, so sessions work on every
gateway sharing it.
A session ends when it is idle for SESSION_IDLE_MINUTES, SESSION_MAX_HOURS after sign-in,
at sign-out, and at once when its key stops working (revoked, expired, its user
disabled: the key table is checked on every request, as for a key; revoking, purging and
disabling also delete the rows). A key holds at most 20 sessions (the store ends the
oldest), sign-ins are limited per key and per client address (signinlimit.py), and a
task deletes ended sessions' rows every SWEEP_INTERVAL_S.

A request authenticated by the cookie rather than a key header may change something
only with `X-Requested-With: aigateway` (a header no other site's page can send without
a CORS preflight, which this gateway does not grant it) and, when it says where it comes
from, from this gateway's own origin: so another site cannot make a signed-in browser
act (cross-site request forgery), besides what SameSite=Strict already stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time

from aiohttp import web

from ..access.keytable import AuthError
from ..db.store import Store
from ..errors import Forbidden, Refused, Unauthorized
from ..records import KeyRecord, StoreError
from .appkeys import KEY_TABLE, SETTINGS, STORE
from .auth import refused
from .clientaddress import client_view, peer_trusted

log = logging.getLogger("aigateway.sessions")

COOKIE = "aigateway_session"
CSRF_HEADER, CSRF_VALUE = "X-Requested-With", "aigateway"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOUCH_EVERY_S = 60.0  # how often a session's last use is written (idle precision)
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# How often ended sessions (idle or past their last hour) are deleted: well within an hour.
SWEEP_INTERVAL_S = 600.0


def session_digest(session_id: str) -> str:
    """What the database keeps of a session id (and finds it by)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def signed_in_browser(request: web.Request) -> bool:
    """Whether a request without a key may be authenticated by its session cookie: the
    dashboard is on, and the request sends no key (a bad key is never passed over)."""
    return (
        request.app[SETTINGS].ui_path is not None
        and COOKIE in request.cookies
        and "Authorization" not in request.headers
        and "x-api-key" not in request.headers
    )


def check_same_origin(request: web.Request) -> None:
    """Refuse a state-changing request that a cookie would authenticate unless this
    gateway's own page sent it."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        raise Forbidden(f"a signed-in browser request that changes something needs {CSRF_HEADER}")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    expected = client_view(request).origin
    if origin.lower() != expected:
        # Behind a proxy that terminates TLS the gateway sees http:// and its own
        # address unless it may believe the proxy's X-Forwarded-* headers: say so.
        hint = (
            ""
            if peer_trusted(request)
            else "; behind a proxy that terminates TLS, set TRUSTED_PROXIES to its address"
        )
        raise Forbidden(f"this request comes from another site (not {expected}){hint}")


async def session_principal(request: web.Request) -> KeyRecord:
    """The key behind the request's session cookie, if the session and the key are
    both still good; Unauthorized saying why not. A cookie that cannot be one of ours
    costs no database look."""
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <API key>' or sign in",
            reason=Refused.MISSING_KEY,
        )
    if not _SESSION_ID.fullmatch(session_id):
        raise Unauthorized(
            "the session has ended: sign in again", reason=Refused.REVOKED_OR_EXPIRED
        )
    store, settings = request.app[STORE], request.app[SETTINGS]
    digest = session_digest(session_id)
    found = await store.find_session(digest)
    now = time.time()
    if found is None:
        raise Unauthorized(
            "the session has ended: sign in again", reason=Refused.REVOKED_OR_EXPIRED
        )
    key_id, seen_at, expires_at = found
    if now >= expires_at or now - seen_at > settings.session_idle_minutes * 60:
        await store.end_session(digest)
        raise Unauthorized(
            "the session has expired: sign in again", reason=Refused.REVOKED_OR_EXPIRED
        )
    try:
        record = request.app[KEY_TABLE].by_id(key_id)
    except AuthError as exc:  # (counted against the key, when the table holds it)
        raise refused(AuthError(f"{exc}: sign in again", exc.reason, exc.key)) from None
    check_same_origin(request)
    if now - seen_at > TOUCH_EVERY_S:
        await store.touch_session(digest, now)
    return record


async def sweep_ended_sessions(store: Store, idle_s: float) -> None:
    """Run until cancelled: delete ended sessions every SWEEP_INTERVAL_S (the first after
    one interval, not in the start-up's way). A database error is logged and the next
    sweep tries again; the task never dies of one."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        try:
            swept = await store.sweep_sessions(time.time(), idle_s)
        except (StoreError, OSError) as exc:
            log.warning("could not delete ended dashboard sessions yet: %s", exc)
        except Exception:  # whatever it was, the next sweep tries again
            log.exception("the dashboard session sweep failed")
        else:
            if swept:
                log.debug("deleted %d ended dashboard sessions", swept)
