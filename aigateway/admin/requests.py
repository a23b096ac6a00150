"""Reading an admin request and answering it, the same way on every admin route (the
admin API, the replaced systems' compatible API, aliases, charts): a JSON body checked
against the fields a route takes, ids and query parameters checked before use, JSON out,
and the key table reloaded after a write."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Set
from typing import Any

import orjson
from aiohttp import web

from ..access.keytable import BOOTSTRAP_KEY_ID
from ..errors import BadRequest
from ..http.appkeys import KEY_TABLE, STORE
from ..http.expect import send_continue
from ..records import MAX_EXPIRES_AT

KEY_ID = re.compile(r"[0-9]{1,18}")


async def read_body(
    request: web.Request, allowed: Set[str], required: frozenset[str] = frozenset()
) -> dict[str, Any]:
    await send_continue(request)
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    missing = required - set(body)
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(sorted(missing))}")
    return body


def check_strings(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if body.get(field) is not None and not isinstance(body[field], str):
            raise BadRequest(f"{field} must be a string")


def key_id_param(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not KEY_ID.fullmatch(raw):  # ASCII digits only, and within SQLite's integers
        raise BadRequest(f"a key id is a whole number of 1 to 18 digits, not {raw[:40]!r}")
    if int(raw) == BOOTSTRAP_KEY_ID:
        raise BadRequest("key 0 is GATEWAY_ADMIN_KEY; change it in the settings")
    return int(raw)


def whole_number_param(query: Mapping[str, str], name: str, most: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > most:
        raise BadRequest(f"{name} must be a whole number up to {most}, not {raw[:20]!r}")
    return int(raw)


def boolean_param(query: Mapping[str, str], name: str) -> bool | None:
    """A query's `true` or `false`; None when it is absent or empty."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {raw[:20]!r}")
    return raw == "true"


def time_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value < MAX_EXPIRES_AT:  # (also refuses nan and inf)
        raise BadRequest(f"{name} must be a Unix time, not {raw[:40]!r}")
    return value


async def reload_keys(request: web.Request) -> None:
    # Our own writes do not change PRAGMA data_version for our connection: reload now.
    await request.app[KEY_TABLE].load(request.app[STORE])


def json_response(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
