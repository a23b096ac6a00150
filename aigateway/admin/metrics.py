"""The /metrics page (usage/metrics.py keeps the series): for anyone who can reach the
gateway with METRICS=on, for an admin key only with METRICS=admin."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import Forbidden, Refused
from ..http.appkeys import METRICS
from ..http.auth import principal, public


@public
async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus's text format (METRICS=on: for anyone who can reach the gateway)."""
    metrics = request.app[METRICS]  # (routed only with METRICS on)
    # In a thread: a page of thousands of series takes tens of milliseconds to write,
    # which the event loop (and every request on it) need not wait for.
    page = await asyncio.to_thread(metrics.page)
    return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def admin_metrics_page(request: web.Request) -> web.Response:
    """The same, for an admin key only (METRICS=admin)."""
    if principal(request).role != "admin":
        raise Forbidden("/metrics needs an admin key", reason=Refused.ADMIN_ONLY)
    return await metrics_page(request)
