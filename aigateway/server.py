"""Run the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import ssl

from aiohttp import web

from . import __version__
from .app import create_app
from .logs import configure_logging
from .relay.state import RELAY
from .settings import Settings, SettingsError

log = logging.getLogger("aigateway")

# A request head is at most MAX_HEADERS headers of MAX_HEAD_LINE bytes (about 512 KiB).
MAX_HEAD_LINE = 8190
MAX_HEADERS = 64


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it serves noticeably more requests per core)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def raise_open_file_limit() -> None:
    """Each open stream holds two sockets (client and Ollama); the usual soft limit of
    1024 files would cap the gateway near 500 streams, so lift it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from TLS_CERT_FILE and TLS_KEY_FILE, or None; a file
    that cannot be used is one clear line (SettingsError), before anything starts."""
    if not settings.tls_cert_file or not settings.tls_key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except FileNotFoundError as exc:
        raise SettingsError(f"TLS: {exc.filename}: no such file") from None
    except PermissionError as exc:
        raise SettingsError(f"TLS: {exc.filename}: not readable by this user") from None
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(
            f"TLS_CERT_FILE / TLS_KEY_FILE: not a PEM certificate chain and its private key"
            f" ({exc.__class__.__name__}: {getattr(exc, 'reason', None) or exc})"
        ) from None
    return context


# The young generation is collected once this many more container objects are alive than
# at its last collection (Python's default: 700).
YOUNG_GENERATION_THRESHOLD = 10_000


async def _warn_if_unanswered(app: web.Application) -> None:
    probe = app[RELAY].pool.probe
    if probe is None:
        return
    probed = await probe.result()
    if not probed.up:
        log.warning(
            "%s at %s; requests get 502 until it answers",
            probed.details["error"],
            probe.upstream.url,
        )


def tune_garbage_collector() -> None:
    """Fit the cyclic garbage collector to a server with many requests in flight.

    Everything start-up made (modules, SQLAlchemy's and the app's objects: some 100,000)
    lives as long as the process, yet each full pass walked all of it: about every two
    seconds under load, 60 ms each time. Frozen after a collection, it is left to
    reference counting, and a full pass takes about a millisecond.

    With dozens of requests in flight, their live objects alone outgrow the default
    threshold of the young generation, so a collection walked them all every few
    requests: about 50,000 instructions a request at 32 connections (callgrind), 6% of
    the relay (15 young collections instead of 3,878 in one benchmark run at this
    threshold). Cyclic garbage waits a little longer: a few megabytes of objects at most."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


def pages_to_open(settings: Settings, port: int) -> str:
    """The start-up line's last part: where the dashboard and the API docs are."""
    dashboard = settings.dashboard_url(port) or "off (UI_PATH=off)"
    return f"dashboard {dashboard}; API docs {settings.docs_url(port)}"


def serve(settings: Settings) -> None:
    configure_logging(settings)
    raise_open_file_limit()
    tls = tls_context(settings)
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(settings, tls))
    finally:
        loop.close()


async def _serve(settings: Settings, tls: ssl.SSLContext | None) -> None:
    runner = web.AppRunner(
        create_app(settings),
        access_log=None,  # we write our own access line, without keys
        # Cancel a handler when its client disconnects, so a silent upstream request
        # (a long prompt evaluation) is closed at once instead of running for nobody.
        handler_cancellation=True,
        # Open requests get SHUTDOWN_TIMEOUT on a stop; app.py ends the rest a second
        # early, each in its dialect, so this wait rarely cancels anything.
        shutdown_timeout=settings.shutdown_timeout,
        # A request head (line and headers) is bounded in size, and in time: a connection
        # that has not sent a whole one within IDLE_TIMEOUT of opening, or of its last
        # answer, is closed however slowly it trickles bytes (aiohttp's keep-alive timer).
        keepalive_timeout=settings.idle_timeout,
        max_line_size=MAX_HEAD_LINE,
        max_field_size=MAX_HEAD_LINE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()  # opens the key store: a bad database stops us here
    try:
        await web.TCPSite(runner, settings.host, settings.port, ssl_context=tls).start()
        port = runner.addresses[0][1]  # the port taken, which PORT=0 leaves to the system
        log.info(
            "aigateway %s listening on %s://%s:%d; %s/* -> %s; %s",
            __version__,
            settings.scheme,
            settings.host,
            port,
            settings.base_path,
            ", ".join(f"{u.name} {u.url}" for u in settings.upstream_list)
            if settings.upstreams or len(settings.upstream_list) > 1
            else settings.upstream_list[0].url + "/api",
            pages_to_open(settings, port),
        )
        tune_garbage_collector()
        # Several upstreams are checked as the app starts (the pool warns of each one out);
        # the one Ollama is asked here, in the background, so a wrong URL is seen at once.
        asking = asyncio.create_task(_warn_if_unanswered(runner.app), name="start-up probe")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: finishing open requests (at most %g s)", settings.shutdown_timeout)
        asking.cancel()
    finally:
        await runner.cleanup()  # drains requests, flushes key use times, closes the store
