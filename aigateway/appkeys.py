"""Every typed application and request key in one place."""

from __future__ import annotations

from aiohttp import web

from .access.keytable import KeyTable
from .access.limits import Limiter
from .admin.exports import ExportSlots
from .db.store import Store
from .http.context import RequestContext
from .http.signinlimit import SignInLimits
from .relaystate import Relay
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
STARTED_AT = web.AppKey("started_at", float)
LIMITER = web.AppKey("limiter", Limiter)
RELAY = web.AppKey("relay", Relay)
SIGN_IN_LIMITS = web.AppKey("sign_in_limits", SignInLimits)
EXPORTS = web.AppKey("exports", ExportSlots)

CONTEXT = web.RequestKey("context", RequestContext)
