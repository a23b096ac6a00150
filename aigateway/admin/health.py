"""Routes answered by the gateway itself, without a key."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from .. import __version__
from ..access.keytable import AuthError, UnknownKeyError
from ..errors import GatewayError
from ..http.appkeys import ALERTS, KEY_TABLE, STARTED_AT
from ..http.auth import authenticate, authenticate_after_a_look, public
from ..relay.state import RELAY


@public
async def root(request: web.Request) -> web.Response:
    """Ollama answers `/` with this text; clients (and the Go CLI's heartbeat) probe it."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def _is_admin(request: web.Request) -> bool:
    """Whether the request presents a valid admin key (health routes need none, but an
    admin's gets the details), with the second look any route gives a key made a
    moment ago."""
    try:
        try:
            record = authenticate(request)
        except UnknownKeyError:
            record = await authenticate_after_a_look(request)
    except (GatewayError, AuthError):
        return False
    return record.role == "admin"


@public
async def health(request: web.Request) -> web.Response:
    """Alive or not, for anyone (load balancers); with an admin key, the details. An
    anonymous caller learns nothing an attacker could use (no key count, no version)."""
    if not await _is_admin(request):
        return _json({"status": "ok"})
    return _json(
        {
            "status": "ok",
            "service": "aigateway",
            "version": __version__,
            "uptime_s": round(time.time() - request.app[STARTED_AT], 1),
            "keys_loaded": len(request.app[KEY_TABLE]),
            "usage": _usage_state(request),
            "alerts": await _alerts_state(request),
        }
    )


async def _alerts_state(request: web.Request) -> dict[str, object] | None:
    """None with alerts off."""
    outbox = request.app.get(ALERTS)
    return None if outbox is None else await outbox.state()


def _usage_state(request: web.Request) -> dict[str, object]:
    """Whether usage records can be kept: how many wait in memory because the journal
    cannot take them (its disk full), and whether new requests are refused for it."""
    usage = request.app[RELAY].usage
    return {
        "waiting_in_memory": usage.waiting_in_memory,
        "journal_error": usage.journal_failing or None,
        "refusing_requests": usage.full,
    }


@public
async def health_ollama(request: web.Request) -> web.Response:
    """Whether Ollama answers (200, else 503); with an admin key, its URL, version,
    round-trip time and what went wrong. With several upstreams: ok when all are up,
    degraded when some are (200), unreachable when none is (503); an admin sees each
    one (up or out and why, latency of its last check, requests in flight, its models
    and those loaded). Nobody makes it call the upstream more than once an interval."""
    pool = request.app[RELAY].pool
    if not pool.single:
        up = sum(u.up for u in pool.upstreams)
        state = "ok" if up == len(pool.upstreams) else "degraded" if up else "unreachable"
        listed: dict[str, object] = {"upstreams": pool.views()}
        return await _answer(request, state, listed, 200 if up else 503)
    assert pool.probe is not None  # one upstream: asked, at most once an interval
    # An admin troubleshooting gets a probe of now; anyone else the last one.
    probed = await pool.probe.result(fresh=await _is_admin(request))
    return await _answer(request, probed.state, probed.details, probed.code)


async def _answer(
    request: web.Request, status: str, details: dict[str, object], code: int
) -> web.Response:
    if await _is_admin(request):
        return _json({"status": status, **details}, status=code)
    return _json({"status": status}, status=code)


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
