"""Every typed application and request key in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .bodybudget import BodyBudget
from .context import RequestContext
from .inflight import InFlight
from .keytable import KeyTable
from .limits import Limiter
from .relaystate import Relay
from .settings import Settings
from .store import Store
from .usage import UsageWriter

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
STARTED_AT = web.AppKey("started_at", float)
LIMITER = web.AppKey("limiter", Limiter)
USAGE = web.AppKey("usage", UsageWriter)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
RELAY = web.AppKey("relay", Relay)

CONTEXT = web.RequestKey("context", RequestContext)
