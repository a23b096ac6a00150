"""The application factory: the middleware, routes, and the resources they share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .access.budgets import Budgets
from .access.budgets_shared import SharedBudgets
from .access.keytable import KeyTable, flush_last_used, keep_fresh
from .access.limits import Limiter, Limits
from .access.limits_shared import SharedLimits
from .admin.aliasroutes import add_alias_routes
from .admin.api import add_admin_routes
from .admin.cacheroutes import add_cache_routes
from .admin.compat import add_compat_routes
from .admin.docs import add_docs_routes
from .admin.health import health, health_ollama, root
from .admin.metrics import admin_metrics_page, metrics_page
from .admin.now import NOW, Now
from .alerts.running import running_alerts
from .db.notify import ChangeListener
from .db.now import NOW_CHANNEL
from .db.store import Store
from .http import httpguard
from .http.appkeys import (
    ALERTS,
    KEY_TABLE,
    LIMITER,
    METRICS,
    REFUSALS,
    SETTINGS,
    SIGN_IN_LIMITS,
    STARTED_AT,
    STORE,
)
from .http.cors import add_cors_headers
from .http.expect import defer_continue
from .http.middleware import gateway_middleware
from .http.sessions import sweep_ended_sessions
from .http.signinlimit import SignInLimits
from .protocol.routes import RELAY_ROUTES
from .records import StoreError
from .relay.bodybudget import BodyBudget
from .relay.cachekeys import RelayCache
from .relay.handler import relay_handler
from .relay.inflight import InFlight
from .relay.state import RELAY, RelayState
from .settings import Settings
from .ui.dashboard import add_dashboard_routes
from .upstreams.cache import ResponseCache
from .upstreams.pool import Pool
from .upstreams.transport import Transport
from .usage.journal import Journal
from .usage.metrics import Metrics
from .usage.refusals import RefusalCounts
from .usage.restart import count_before_admitting
from .usage.traces import open_tracing
from .usage.writer import UsageWriter

if TYPE_CHECKING:
    from .usage.spans import SpanExporter

log = logging.getLogger("aigateway")

# Where traces go instead of where OTEL_* says (the tests' in-memory exporter).
_SPAN_EXPORTER: web.AppKey[SpanExporter] = web.AppKey("span_exporter")


def create_app(settings: Settings, *, span_exporter: SpanExporter | None = None) -> web.Application:
    """The gateway; `span_exporter` turns traces on and sends them there (tests), else
    the OTEL_* environment decides (usage/traces.py)."""
    httpguard.install()
    app = web.Application(middlewares=[gateway_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    if span_exporter is not None:
        app[_SPAN_EXPORTER] = span_exporter
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
    app.on_shutdown.append(_finish_open_requests)
    if settings.cors_origins:
        app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_running)
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
    add_alias_routes(app, settings.admin_path)
    add_cache_routes(app, settings.admin_path)
    add_compat_routes(app, settings)
    add_dashboard_routes(app, settings)
    add_docs_routes(app, settings)
    for route in RELAY_ROUTES:
        handler = relay_handler(route, app)
        for method in route.methods:
            path = settings.client_prefix(route.native) + route.path
            router.add_route(method, path, handler, expect_handler=defer_continue)


async def _finish_open_requests(app: web.Application) -> None:
    """On a graceful stop (the server no longer accepts connections): give open requests
    all but a second of SHUTDOWN_TIMEOUT, then end the rest, each in its dialect, so that
    the server's own wait (SHUTDOWN_TIMEOUT) ends with every response finished."""
    await app[RELAY].in_flight.drain(max(0.0, app[SETTINGS].shutdown_timeout - 1.0))


async def _running(app: web.Application) -> AsyncIterator[None]:
    """Everything the running gateway holds, made in order and closed in the reverse
    order (also when start-up fails half-way): the store and the keys, the alerts (which
    close last, so what was raised meanwhile reaches their outbox), the usage writer
    (after it counted what the journal holds), the limits and budgets shared with other
    gateways, the background tasks, the way out to upstreams and their checks, the tracer
    (its last spans exported when it closes); then the relay's state, built complete from
    them. Closing runs after the server stopped
    taking requests and finished (or cancelled) the open ones, so every usage record is
    queued by then."""
    settings = app[SETTINGS]
    table, limiter = app[KEY_TABLE], app[LIMITER]
    async with contextlib.AsyncExitStack() as stack:
        store = app[STORE] = await Store.open(settings.database)
        stack.push_async_callback(store.close)
        await table.refresh(store)
        if len(table) == 0:
            log.warning(
                "the key database has no keys yet: make one with"
                " ./gen_api_key_cli.py -g USER KEY_NAME (or set GATEWAY_ADMIN_KEY)"
            )
        _name_provider_upstreams(settings)
        _warn_of_unpriced_cloud_models(settings, table)
        stack.push_async_callback(flush_last_used, store, table)
        alerts = await stack.enter_async_context(running_alerts(settings, store, table))
        if alerts.outbox is not None:
            app[ALERTS] = alerts.outbox
        journal = _journal(settings, store)
        usage = UsageWriter(
            store,
            settings.usage_retention_days,
            journal,
            settings.usage_memory_records,
            RefusalCounts(alerts.refused),
        )
        app[REFUSALS] = usage.refusals.counts
        budgets = Budgets(settings.currency, alerts.sink)
        await count_before_admitting(usage, store, table, limiter, budgets)
        stack.push_async_callback(usage.close)
        transport = Transport(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
        stack.push_async_callback(transport.close)
        pool = Pool(
            settings.upstream_list,
            settings.upstream_check_interval,
            settings.upstream_queue_timeout,
            transport,
            alerts.sink,
        )
        in_flight = InFlight()
        postgresql = store.database.backend == "postgresql"
        now = app[NOW] = Now(store, in_flight, pool, shared=postgresql)
        listener = shared = shared_budgets = None
        if postgresql:
            shared = SharedLimits(
                store.database,
                settings.limits_when_database_away,
                settings.heartbeat_interval,
                settings.dead_gateway_after,
            )
            await shared.start()
            stack.push_async_callback(shared.close)
            shared_budgets = SharedBudgets(shared, budgets)
            shared_budgets.start()
            stack.push_async_callback(shared_budgets.close)
            listener = ChangeListener(store.database)
            listener.also(NOW_CHANNEL, now.heard)
            listener.start()
            stack.push_async_callback(listener.close)
            _in_background(stack, now.publishing(), "aigateway-now")
        _in_background(stack, keep_fresh(store, table, listener), "aigateway-keys")
        idle_s = settings.session_idle_minutes * 60.0
        _in_background(stack, sweep_ended_sessions(store, idle_s), "aigateway-session-sweep")
        cache = None
        if settings.cache_bytes:
            cache = RelayCache(settings, ResponseCache(settings.cache_bytes, settings.cache_ttl))
            pool.wants_lists = True  # (the models' digests key the answers)
        observe = None
        if settings.metrics != "off":
            answers = None if cache is None else cache.answers
            metrics = app[METRICS] = Metrics(pool, in_flight, settings.currency, answers)
            observe = metrics.observe
        await stack.enter_async_context(pool.checking())
        tracing = open_tracing(exporter=app.get(_SPAN_EXPORTER))
        if tracing is not None:
            stack.push_async_callback(asyncio.to_thread, tracing.close)  # (spans flushed)
        relay = app[RELAY] = RelayState(
            settings,
            pool=pool,
            transport=transport,
            key_table=table,
            limiter=limiter,
            shared=shared,
            budgets=budgets,
            shared_budgets=shared_budgets,
            body_budget=BodyBudget(settings.max_body_memory, settings.body_memory_per_key),
            in_flight=in_flight,
            usage=usage,
            observe=observe,
            loop=asyncio.get_running_loop(),
            tracing=tracing,
            cache=cache,
        )
        stack.push_async_callback(relay.body_pace.close)
        yield


def _journal(settings: Settings, store: Store) -> Journal:
    """USAGE_JOURNAL_DIR, else beside the SQLite file in use (on PostgreSQL: beside
    TOKEN_DB_PATH's), so that two gateways with two SQLite files never share one."""
    folder = settings.usage_journal_dir
    if not folder:
        folder = (store.database.path or settings.token_db_path) + ".usage-journal"
        # Where it was before it followed DATABASE_URL:
        earlier = settings.token_db_path + ".usage-journal"
        if earlier != folder and os.path.isdir(earlier) and os.listdir(earlier):
            log.warning(
                "%s holds a usage journal of an earlier run with DATABASE_URL; the journal is"
                " now beside the database (%s): to write what it holds, start once with"
                " USAGE_JOURNAL_DIR=%s",
                earlier,
                folder,
                earlier,
            )
    journal = Journal(folder)
    try:
        journal.open()
    except OSError as exc:
        raise StoreError(f"{journal.folder}: cannot use the usage journal: {exc}") from None
    return journal


def _in_background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run `work` as a task until the stack closes, then cancel it and wait for it."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


def _name_provider_upstreams(settings: Settings) -> None:
    """Say at start-up which cloud APIs OPENAI_API_KEY and ANTHROPIC_API_KEY added (the
    key itself never), or, with UPSTREAMS_FILE, that those settings do nothing."""
    for upstream in settings.provider_upstreams:
        log.info(
            "upstream %s (kind %s, from %s) at %s serves %s to keys whose allow-list names"
            " the model",
            upstream.name,
            upstream.kind,
            upstream.key_env,
            upstream.url,
            ", ".join(upstream.models or ()),
        )
    ignored = settings.ignored_provider_settings
    if ignored:
        log.warning(
            "UPSTREAMS_FILE lists the upstreams, so %s %s ignored (an entry's key_env may"
            " name such a key)",
            ", ".join(ignored),
            "is" if len(ignored) == 1 else "are",
        )


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
