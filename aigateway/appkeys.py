"""Every typed application and request key in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .keytable import KeyTable
from .limits import Limiter
from .settings import Settings
from .store import KeyRecord, Store
from .usage import UsageWriter

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
KEY_TABLE = web.AppKey("key_table", KeyTable)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
STARTED_AT = web.AppKey("started_at", float)
LIMITER = web.AppKey("limiter", Limiter)
USAGE = web.AppKey("usage", UsageWriter)

PRINCIPAL = web.RequestKey("principal", KeyRecord)
MODEL = web.RequestKey("model", str)
REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_GONE = web.RequestKey("client_gone", bool)
BYTES_OUT = web.RequestKey("bytes_out", int)  # response body bytes, set by the relay
RECEIVED_AT = web.RequestKey("received_at", float)  # perf_counter() when the request came in
