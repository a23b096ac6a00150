"""Routes answered by the gateway itself, without a key."""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web

from . import __version__
from .appkeys import KEY_TABLE, RELAY, STARTED_AT
from .auth import authenticate, authenticate_after_a_look, public
from .errors import GatewayError
from .keytable import AuthError, UnknownKeyError
from .upstreams.pool import CheckFailed

OLLAMA_PROBE_TIMEOUT_S = 5.0


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
        }
    )


@public
async def health_ollama(request: web.Request) -> web.Response:
    """Whether Ollama answers (200, else 503); with an admin key, its URL, version,
    round-trip time and what went wrong. With several upstreams: ok when all are up,
    degraded when some are (200), unreachable when none is (503); an admin sees each
    one (up or out and why, latency of its last check, requests in flight, its models
    and those loaded)."""
    pool = request.app[RELAY].pool
    if not pool.single:
        up = sum(u.up for u in pool.upstreams)
        state = "ok" if up == len(pool.upstreams) else "degraded" if up else "unreachable"
        listed: dict[str, object] = {"upstreams": pool.views()}
        return await _answer(request, state, listed, 200 if up else 503)
    only = pool.upstreams[0]
    upstream = only.config
    # A cloud API has no /api/version: its model list says whether it answers (what
    # the checks of several upstreams ask it).
    ollama = upstream.kind == "ollama"
    probe = "/api/version" if ollama else "/models"
    who = "Ollama" if ollama else f"upstream {upstream.name}"
    details: dict[str, object] = (
        {"ollama_url": upstream.url} if ollama else {"upstream": upstream.name, "url": upstream.url}
    )
    started = time.perf_counter()
    try:
        status, body = await pool.fetch(only, probe, OLLAMA_PROBE_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, CheckFailed) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        details["error"] = f"{who} did not answer: {reason}"
        return await _answer(request, "unreachable", details, 503)
    details["rtt_ms"] = round((time.perf_counter() - started) * 1000, 2)
    version = None
    if ollama:
        try:
            doc = orjson.loads(body)
            version = doc.get("version") if isinstance(doc, dict) else None
        except orjson.JSONDecodeError:
            pass
    if status != 200 or (ollama and not isinstance(version, str)):
        details["error"] = f"{who} answered {probe} with status {status}"
        return await _answer(request, "unhealthy", details, 503)
    if ollama:
        details["ollama_version"] = version
    return await _answer(request, "ok", details, 200)


async def _answer(
    request: web.Request, status: str, details: dict[str, object], code: int
) -> web.Response:
    if await _is_admin(request):
        return _json({"status": status, **details}, status=code)
    return _json({"status": status}, status=code)


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
