"""The application factory: the middleware, routes, and the resources they share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from .access.budgets import Budgets
from .access.budgets_shared import SharedBudgets
from .access.keytable import KeyTable, flush_last_used, keep_fresh
from .access.limits import Limiter, Limits
from .access.limits_shared import SharedLimits
from .admin.api import add_admin_routes
from .admin.docs import add_docs_routes
from .admin.health import health, health_ollama, root
from .admin.metrics import admin_metrics_page, metrics_page
from .db.notify import ChangeListener
from .db.store import Store
from .http import httpguard
from .http.appkeys import KEY_TABLE, LIMITER, METRICS, SETTINGS, SIGN_IN_LIMITS, STARTED_AT, STORE
from .http.cors import add_cors_headers
from .http.expect import defer_continue
from .http.middleware import gateway_middleware
from .http.sessions import sweep_ended_sessions
from .http.signinlimit import SignInLimits
from .protocol.routes import RELAY_ROUTES
from .records import StoreError
from .relay.bodybudget import BodyBudget
from .relay.handler import relay_handler
from .relay.inflight import InFlight
from .relay.state import RELAY, RelayState
from .settings import Settings
from .ui.dashboard import add_dashboard_routes
from .upstreams.pool import Pool
from .upstreams.transport import Transport
from .usage.journal import Journal
from .usage.metrics import Metrics
from .usage.restart import count_before_admitting
from .usage.writer import UsageWriter

log = logging.getLogger("aigateway")


def create_app(settings: Settings) -> web.Application:
    httpguard.install()
    app = web.Application(middlewares=[gateway_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[KEY_TABLE] = KeyTable(settings.gateway_admin_key)
    app[LIMITER] = Limiter(
        Limits(
            rpm=settings.default_rpm,
            rph=settings.default_rph,
            tokens_per_day=settings.default_tokens_per_day,
            max_concurrent=settings.default_max_concurrent,
        )
    )
    app[STARTED_AT] = time.time()
    app[SIGN_IN_LIMITS] = SignInLimits()
    pool = Pool(
        settings.upstream_list, settings.upstream_check_interval, settings.upstream_queue_timeout
    )
    in_flight = InFlight()
    observe = None
    if settings.metrics != "off":
        metrics = app[METRICS] = Metrics(pool, in_flight, settings.currency)
        observe = metrics.observe
    app[RELAY] = RelayState(
        settings,
        pool,
        app[LIMITER],
        BodyBudget(settings.max_body_memory, settings.body_memory_per_key),
        in_flight,
        app[KEY_TABLE],
        Budgets(settings.currency),
        observe,
    )
    app.on_shutdown.append(_finish_open_requests)
    if settings.cors_origins:
        app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_key_store)
    app.cleanup_ctx.append(_session_sweep)
    app.cleanup_ctx.append(_upstream)
    _add_routes(app, settings)
    return app


def _add_routes(app: web.Application, settings: Settings) -> None:
    router = app.router
    probe_paths = ["/"]
    if settings.ollama_prefix:
        # A client with host http://gw/ollama probes /ollama, not /.
        probe_paths += [settings.ollama_prefix, settings.ollama_prefix + "/"]
    for path in probe_paths:
        router.add_route("GET", path, root, expect_handler=defer_continue)
        router.add_route("HEAD", path, root, expect_handler=defer_continue)
    router.add_route("GET", "/health", health, expect_handler=defer_continue)
    router.add_route("GET", "/health/ollama", health_ollama, expect_handler=defer_continue)
    if settings.metrics != "off":
        page = metrics_page if settings.metrics == "on" else admin_metrics_page
        router.add_route("GET", "/metrics", page, expect_handler=defer_continue)
    add_admin_routes(app, settings.admin_path)
    add_dashboard_routes(app, settings)
    add_docs_routes(app, settings)
    for route in RELAY_ROUTES:
        handler = relay_handler(route, app[RELAY])
        for method in route.methods:
            path = settings.client_prefix(route.native) + route.path
            router.add_route(method, path, handler, expect_handler=defer_continue)


async def _finish_open_requests(app: web.Application) -> None:
    """On a graceful stop (the server no longer accepts connections): give open requests
    all but a second of SHUTDOWN_TIMEOUT, then end the rest, each in its dialect, so that
    the server's own wait (SHUTDOWN_TIMEOUT) ends with every response finished."""
    await app[RELAY].in_flight.drain(max(0.0, app[SETTINGS].shutdown_timeout - 1.0))


async def _key_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await Store.open(settings.database)
    table = app[KEY_TABLE]
    app[STORE] = store
    await table.refresh(store)
    if len(table) == 0:
        log.warning(
            "the key database has no keys yet: make one with"
            " ./gen_api_key_cli.py -g USER KEY_NAME (or set GATEWAY_ADMIN_KEY)"
        )
    _warn_of_unpriced_cloud_models(settings, table)
    journal = Journal(settings.usage_journal_dir or settings.token_db_path + ".usage-journal")
    try:
        journal.open()
    except OSError as exc:
        raise StoreError(f"{journal.folder}: cannot use the usage journal: {exc}") from None
    relay = app[RELAY]
    usage = relay.usage = UsageWriter(
        store,
        settings.usage_retention_days,
        journal,
        settings.usage_memory_records,
        relay.refuse_while_storage_full,
    )
    await count_before_admitting(usage, store, table, app[LIMITER], relay.budgets)
    listener = shared = shared_budgets = None
    if store.database.backend == "postgresql":
        shared = SharedLimits(
            store.database,
            settings.limits_when_database_away,
            settings.heartbeat_interval,
            settings.dead_gateway_after,
        )
        await shared.start()
        app[RELAY].shared = shared
        shared_budgets = app[RELAY].shared_budgets = SharedBudgets(shared, app[RELAY].budgets)
        shared_budgets.start()
        listener = ChangeListener(store.database)
        listener.start()
    refresher = asyncio.create_task(keep_fresh(store, table, listener), name="aigateway-keys")
    try:
        yield
    finally:
        # Runs after the server stopped taking requests and finished (or cancelled)
        # the open ones, so every usage record is queued by now.
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        if listener is not None:
            await listener.close()
        if shared_budgets is not None:
            await shared_budgets.close()
        if shared is not None:
            await shared.close()
        await usage.close()
        await flush_last_used(store, table)
        await store.close()


async def _session_sweep(app: web.Application) -> AsyncIterator[None]:
    """Ended dashboard sessions are deleted by a task of their own, stopped before the
    store closes."""
    idle_s = app[SETTINGS].session_idle_minutes * 60.0
    sweeper = asyncio.create_task(
        sweep_ended_sessions(app[STORE], idle_s), name="aigateway-session-sweep"
    )
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


def _warn_of_unpriced_cloud_models(settings: Settings, table: KeyTable) -> None:
    """A cloud API's models, and Ollama's cloud models when they are allowed, are paid
    with the gateway owner's account: say so at start-up when no price covers one of them
    (its requests would be recorded at cost 0, and pass every budget)."""
    if settings.allow_cloud_models and table.prices.for_model("any:cloud") is None:
        log.warning(
            "ALLOW_CLOUD_MODELS is on and no price matches Ollama's cloud models (such as"
            " '*' or '*:cloud'): their requests cost nothing here"
        )
    for upstream in settings.upstream_list:
        if upstream.kind == "ollama":
            continue
        for pattern in upstream.models or ():
            if table.prices.for_model(pattern) is None:
                log.warning(
                    "upstream %s (a %s API paid with this gateway's key) serves %r, which no"
                    " price matches: its requests cost nothing here (set one with"
                    " ./gen_api_key_cli.py --set-price)",
                    upstream.name,
                    upstream.kind,
                    pattern,
                )


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    transport = Transport(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
    )
    app[RELAY].transport = transport
    app[RELAY].loop = asyncio.get_running_loop()
    try:
        async with app[RELAY].pool.checking(transport):
            yield
    finally:
        await app[RELAY].body_pace.close()
        await transport.close()
