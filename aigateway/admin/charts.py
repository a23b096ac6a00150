"""GET /admin/series?range=...: what the dashboard's charts draw. Every bucket of the
last 24 hours or 7 days (per hour) or 30 UTC days (per day), the current one last, in
total or split by model or user (the top few and the rest), for the gateway or for the
signed-in key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast, get_args

import orjson
from aiohttp import web

from ..db.rollups import HOUR
from ..db.series import Split
from ..errors import BadRequest, Forbidden
from ..http.appkeys import STORE
from ..http.auth import principal
from ..records import DAY

# range -> (bucket seconds, buckets)
RANGES = {"24h": (HOUR, 24), "7d": (HOUR, 7 * 24), "30d": (DAY, 30)}
SPLITS: tuple[str, ...] = get_args(Split)
SCOPES = ("gateway", "me")
TOP_DEFAULT = 5
TOP_MOST = 20
CHART_PARAMS = frozenset({"range", "split", "scope", "top"})


async def chart_series(request: web.Request) -> web.Response:
    """Requests, tokens, cost, errors and early leaves per bucket of `range`, split by
    `split`, of `scope` (an admin's default: the gateway; any other key: itself, only)."""
    query = request.query
    caller = principal(request)
    range_ = _one_of(query, "range", tuple(RANGES), "24h")
    split = cast(Split, _one_of(query, "split", SPLITS, "total"))
    scope = _one_of(query, "scope", SCOPES, "gateway" if caller.role == "admin" else "me")
    top = _top(query)
    if scope == "gateway" and caller.role != "admin":
        raise Forbidden("only an admin key sees the gateway's usage; ask for scope=me")
    if scope == "me" and split == "user":
        raise BadRequest("a key's usage has one user: split it by model, or not at all")
    bucket_s, buckets = RANGES[range_]
    # The current bucket is the last one; buckets start on the hour, days at 00:00 UTC.
    since = (int(time.time()) // bucket_s - buckets + 1) * bucket_s
    key_id = caller.id if scope == "me" else None
    groups = await request.app[STORE].usage_chart(since, bucket_s, buckets, split, key_id, top)
    doc = {
        "range": range_,
        "split": split,
        "scope": scope,
        "bucket_seconds": bucket_s,
        "starts": [since + i * bucket_s for i in range(buckets)],
        "groups": [group.as_json() for group in groups],
    }
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _one_of(query: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = query.get(name, default)
    if raw not in allowed:
        raise BadRequest(f"{name} is one of {', '.join(allowed)}, not {raw[:20]!r}")
    return raw


def _top(query: Mapping[str, str]) -> int:
    raw = query.get("top", str(TOP_DEFAULT))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 2 and 1 <= int(raw) <= TOP_MOST):
        raise BadRequest(f"top must be a whole number from 1 to {TOP_MOST}, not {raw[:20]!r}")
    return int(raw)
