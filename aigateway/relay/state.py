"""What every relayed request uses, in one object."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ..access.budgets import Budgets
from ..access.budgets_shared import SharedBudgets
from ..access.keytable import KeyTable
from ..access.limits import Limiter
from ..access.limits_shared import SharedLimits
from ..protocol.routes import RelayRoute
from ..settings import Settings
from ..upstreams.pool import Pool
from ..upstreams.transport import Transport
from ..usage.traces import Tracing
from ..usage.writer import UsageWriter
from .bodybudget import BodyBudget
from .bodypace import BodyPace
from .cachekeys import RelayCache
from .inflight import InFlight

# What a settled request tells the metrics (Metrics.observe, with METRICS on or admin):
# route, status, model, upstream, seconds, seconds to the first byte, prompt and
# completion tokens, cost. A callback, so that the relay does not import the metrics.
Observe = Callable[
    [RelayRoute, int, str | None, str, float, float | None, int | None, int | None, int], None
]


class RelayState:
    """What every relayed request uses, in one object, built complete when the app starts
    (app.py) from what the running gateway holds: the upstreams and the way out to them,
    the limits and budgets (this gateway's, and those shared with other gateways on
    PostgreSQL), the body memory, the requests in flight, the usage writer and the tracer."""

    __slots__ = (
        "body_budget",
        "body_pace",
        "budgets",
        "cache",
        "in_flight",
        "key_table",
        "limiter",
        "loop",
        "observe",
        "pool",
        "settings",
        "shared",
        "shared_budgets",
        "tracing",
        "transport",
        "usage",
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings,
        *,
        pool: Pool,
        transport: Transport,
        key_table: KeyTable,
        limiter: Limiter,
        shared: SharedLimits | None,
        budgets: Budgets,
        shared_budgets: SharedBudgets | None,
        body_budget: BodyBudget,
        in_flight: InFlight,
        usage: UsageWriter,
        observe: Observe | None,
        loop: asyncio.AbstractEventLoop,
        tracing: Tracing | None = None,
        cache: RelayCache | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool  # the upstreams: which serves a request, and whether each is up
        self.transport = transport  # the way out to them
        self.key_table = key_table  # also holds the prices in force
        self.limiter = limiter
        # Limits shared with other gateways (PostgreSQL); None: this gateway's alone.
        self.shared = shared
        # Spend against budgets: this gateway's reckoning, and the shared one (PostgreSQL).
        self.budgets = budgets
        self.shared_budgets = shared_budgets
        self.body_budget = body_budget
        self.body_pace = BodyPace(settings.body_min_rate)  # BODY_MIN_RATE: slow bodies cut
        self.in_flight = in_flight
        self.usage = usage  # (its `full`: records can be kept nowhere more; refuse requests)
        self.observe = observe  # None: METRICS is off
        # The event loop, to ask for the current task without asyncio.get_running_loop(),
        # which makes a getpid system call each time (a check for a forked process).
        self.loop = loop
        self.tracing = tracing  # None: traces are off (usage/traces.py)
        self.cache = cache  # None: the response cache is off (CACHE_SIZE)


RELAY = web.AppKey("relay", RelayState)
