"""Every typed application and request key in one place."""

from __future__ import annotations

from aiohttp import web

from .context import RequestContext
from .exports import ExportSlots
from .keytable import KeyTable
from .limits import Limiter
from .relay.state import RELAY as RELAY  # (typed beside its class)
from .settings import Settings
from .signinlimit import SignInLimits
from .store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
STARTED_AT = web.AppKey("started_at", float)
LIMITER = web.AppKey("limiter", Limiter)
SIGN_IN_LIMITS = web.AppKey("sign_in_limits", SignInLimits)
EXPORTS = web.AppKey("exports", ExportSlots)

CONTEXT = web.RequestKey("context", RequestContext)
