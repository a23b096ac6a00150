"""Every typed application and request key in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .keytable import KeyTable
from .settings import Settings
from .store import KeyRecord, Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
STARTED_AT = web.AppKey("started_at", float)

PRINCIPAL = web.RequestKey("principal", KeyRecord)
MODEL = web.RequestKey("model", str)
REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_GONE = web.RequestKey("client_gone", bool)
