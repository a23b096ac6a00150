"""Routes answered by the gateway itself, without a key."""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web

from . import __version__
from .appkeys import KEY_TABLE, SETTINGS, STARTED_AT, UPSTREAM
from .auth import public

OLLAMA_PROBE_TIMEOUT_S = 5.0


@public
async def root(request: web.Request) -> web.Response:
    """Ollama answers `/` with this text; clients (and the Go CLI's heartbeat) probe it."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


@public
async def health(request: web.Request) -> web.Response:
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
    settings = request.app[SETTINGS]
    url = settings.upstream_api_base + "/version"
    started = time.perf_counter()
    headers = {}
    if settings.upstream_api_key:
        headers["Authorization"] = f"Bearer {settings.upstream_api_key}"
    try:
        async with request.app[UPSTREAM].get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=OLLAMA_PROBE_TIMEOUT_S)
        ) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return _json(
            {
                "status": "unreachable",
                "ollama_url": settings.ollama_base_url,
                "error": f"Ollama did not answer: {reason}",
            },
            status=503,
        )
    rtt_ms = round((time.perf_counter() - started) * 1000, 2)
    version = None
    try:
        doc = orjson.loads(body)
        version = doc.get("version") if isinstance(doc, dict) else None
    except orjson.JSONDecodeError:
        pass
    if status != 200 or not isinstance(version, str):
        return _json(
            {
                "status": "unhealthy",
                "ollama_url": settings.ollama_base_url,
                "rtt_ms": rtt_ms,
                "error": f"Ollama answered /api/version with status {status}",
            },
            status=503,
        )
    return _json(
        {
            "status": "ok",
            "ollama_url": settings.ollama_base_url,
            "ollama_version": version,
            "rtt_ms": rtt_ms,
        }
    )


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
