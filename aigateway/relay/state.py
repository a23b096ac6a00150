"""What every relayed request uses, in one object."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from ..budgets import Budgets
from ..keytable import KeyTable
from ..limits import Limiter
from ..settings import Settings
from ..sharedbudgets import SharedBudgets
from ..sharedlimits import SharedLimits
from ..upstreams.pool import Pool
from .bodybudget import BodyBudget
from .bodypace import BodyPace
from .inflight import InFlight

if TYPE_CHECKING:
    from ..metrics import Metrics
from ..usage import UsageWriter


class Relay:
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
        "metrics",
        "pool",
        "settings",
        "shared",
        "shared_budgets",
        "storage_full",
        "upstream",
        "usage",
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings,
        limiter: Limiter,
        body_budget: BodyBudget,
        in_flight: InFlight,
        key_table: KeyTable,
        budgets: Budgets,
    ) -> None:
        self.settings = settings
        # The upstreams: which serves a request, and whether each is up.
        self.pool = Pool(
            settings.upstream_list,
            settings.upstream_check_interval,
            settings.upstream_queue_timeout,
        )
        self.metrics: Metrics | None = None  # with METRICS on or admin
        self.key_table = key_table  # also holds the prices in force
        self.limiter = limiter
        self.body_budget = body_budget
        self.body_pace = BodyPace(settings.body_min_rate)  # BODY_MIN_RATE: slow bodies cut
        self.in_flight = in_flight
        self.upstream: aiohttp.ClientSession | None = None
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
