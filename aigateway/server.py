"""Run the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import __version__
from .app import create_app
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("aigateway")

# How long a graceful stop waits for open requests (long streams) before cancelling them.
SHUTDOWN_TIMEOUT_S = 10.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it serves noticeably more requests per core)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve(settings: Settings) -> None:
    configure_logging(settings)
    app = create_app(settings)

    async def announce(_: web.Application) -> None:
        log.info(
            "aigateway %s listening on http://%s:%d; %s/* -> %s",
            __version__,
            settings.host,
            settings.port,
            settings.base_path,
            settings.upstream_api_base,
        )

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,  # we write our own access line, without keys
        # Cancel a handler when its client disconnects, so a silent upstream request
        # (a long prompt evaluation) is closed at once instead of running for nobody.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=None,
        loop=new_event_loop(),
    )
