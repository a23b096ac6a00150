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
from ..usage.writer import UsageWriter
from .bodybudget import BodyBudget
from .bodypace import BodyPace
from .inflight import InFlight

# What a settled request tells the metrics (Metrics.observe, with METRICS on or admin):
# route, status, model, upstream, seconds, seconds to the first byte, prompt and
# completion tokens, cost. A callback, so that the relay does not import the metrics.
Observe = Callable[
    [RelayRoute, int, str | None, str, float, float | None, int | None, int | None, int], None
]


class RelayState:
    """What every relayed request uses, in one object that the handlers hold (an app
    lookup each would cost more than most steps of the relay). The upstream session and
    the usage writer are set when the app starts."""

    __slots__ = (
        "body_budget",
        "body_pace",
        "budgets",
        "in_flight",
        "key_table",
        "limiter",
        "loop",
        "observe",
        "pool",
        "settings",
        "shared",
        "shared_budgets",
        "storage_full",
        "transport",
        "usage",
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        limiter: Limiter,
        body_budget: BodyBudget,
        in_flight: InFlight,
        key_table: KeyTable,
        budgets: Budgets,
        observe: Observe | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool  # the upstreams: which serves a request, and whether each is up
        self.observe = observe  # None: METRICS is off
        self.key_table = key_table  # also holds the prices in force
        self.limiter = limiter
        self.body_budget = body_budget
        self.body_pace = BodyPace(settings.body_min_rate)  # BODY_MIN_RATE: slow bodies cut
        self.in_flight = in_flight
        self.transport: Transport | None = None  # the way out to upstreams
        # The event loop, to ask for the current task without asyncio.get_running_loop(),
        # which makes a getpid system call each time (a check for a forked process).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.usage: UsageWriter | None = None
        # Usage records can be kept nowhere more (UsageWriter.full): refuse requests.
        self.storage_full = False
        # Limits shared with other gateways (PostgreSQL); None: this gateway's alone.
        self.shared: SharedLimits | None = None
        # Spend against budgets: this gateway's reckoning, and the shared one (PostgreSQL).
        self.budgets = budgets
        self.shared_budgets: SharedBudgets | None = None

    def refuse_while_storage_full(self, full: bool) -> None:
        """The usage writer's word: whether records of new requests could be kept."""
        self.storage_full = full


RELAY = web.AppKey("relay", RelayState)
