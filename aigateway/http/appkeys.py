"""The typed application and request keys of what every layer from http/ up reads: the
settings, the store, the key table, the limiter, sign-in limits, the metrics, the refusal
counts, and each request's context. (A key of a higher layer's object is defined beside
its class: relaystate.RELAY, admin/api.EXPORTS.)"""

from __future__ import annotations

from aiohttp import web

from ..access.keytable import KeyTable
from ..access.limits import Limiter
from ..alerts.outbox import AlertOutbox
from ..db.store import Store
from ..settings import Settings
from ..usage.metrics import Metrics
from ..usage.refusals import RefusalCounts
from .context import RequestContext
from .signinlimit import SignInLimits

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
STARTED_AT = web.AppKey("started_at", float)
LIMITER = web.AppKey("limiter", Limiter)
SIGN_IN_LIMITS = web.AppKey("sign_in_limits", SignInLimits)
METRICS = web.AppKey("metrics", Metrics)  # set only with METRICS on
REFUSALS = web.AppKey("refusals", RefusalCounts)  # what the usage writer writes per hour
ALERTS = web.AppKey("alerts", AlertOutbox)  # set only with alerts on

CONTEXT = web.RequestKey("context", RequestContext)
