"""The admin HTTP API, under ADMIN_PATH (default /admin), outside BASE_PATH because
Ollama keeps adding routes under /api. JSON in and out.

    GET    /admin/me            any key: itself, its limits and current use, its usage
    GET    /admin/keys          admin: every key (metadata only)
    POST   /admin/keys          admin: create a key; the key is in the answer, once
    GET    /admin/keys/{id}     admin: one key
    PATCH  /admin/keys/{id}     admin: change role, expiry, limits or allow-list
    DELETE /admin/keys/{id}     admin: revoke (the row stays; and the keys it made)
    GET, POST /admin/me/keys, DELETE /admin/me/keys/{id}
                                a user-role key, with SELF_SERVICE_KEYS on: the keys it
                                made, make one (no more than itself), revoke one of them
    GET    /admin/stats         admin: usage statistics and current rate-limit use
    GET    /admin/series        any key: usage per hour or day, in total or by model or
                                user (an admin: everyone's, or its own; others their own)
    GET    /admin/usage         any key: usage records, filtered, paged or downloaded
    GET    /admin/users, POST /admin/users, GET and PATCH /admin/users/{name}
                                admin: users (customers), their budgets, disabling
    GET    /admin/users/{name}/budget
                                admin: a user's budget, spent, remaining, per key
    GET    /admin/users/{name}/invoice[?since=&until=]
                                admin: a user's usage per model and total cost
    GET    /admin/models        any key: the models it may use, with their prices
    GET, POST, DELETE /admin/prices
                                admin: prices per model pattern
    GET    /admin/now           admin: requests in flight on every gateway, the upstreams
    POST   /admin/now/{id}/stop admin: end a request in flight, on whichever gateway
    GET, POST, DELETE /admin/aliases
                                admin: model aliases (global, per user, per key)
    GET, DELETE /admin/cache    admin: this gateway's response cache; empty it

Money is in micro-units of CURRENCY (1.5 USD is 1500000) everywhere in this API (costs
are kept in nano-units; each amount shown is rounded half up once, from its sum). A
budget is `{"amount": 50000000, "period": "monthly", "alert_percent": 80}` (period
total, daily, weekly or monthly; alert optional), or null for none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Set
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..access.allowlist import filter_model_list, identity
from ..access.budgets import period_start
from ..access.limits_shared import DATABASE_AWAY as SHARED_LIMITS_AWAY
from ..errors import BadRequest, Conflict, Forbidden, NotFound, UpstreamUnreachable
from ..http.appkeys import CONTEXT, KEY_TABLE, LIMITER, SETTINGS, STORE
from ..http.auth import principal
from ..http.expect import defer_continue
from ..protocol.body import first_text_field
from ..records import (
    DAY,
    LIMIT_FIELDS,
    MAX_EXPIRES_AT,
    PRICE_FIELDS,
    AmbiguousKeyError,
    Budget,
    BudgetError,
    CapReachedError,
    DuplicateKeyError,
    InvalidInputError,
    KeyLimits,
    KeyNotFoundError,
    KeyRecord,
    ModelInfo,
    NotPermittedError,
    Price,
    UsageQuery,
    check_budget,
)
from ..relay.state import RELAY
from ..upstreams.pool import Pool
from ..upstreams.probe import CheckFailed
from ..upstreams.transport import UpstreamFailed
from ..upstreams.union import TAGS, union_of_lists
from . import service
from .charts import CHART_PARAMS, chart_series
from .exports import ExportSlots, UsageText
from .now import now_stop, now_view
from .reports import user_budget_report, user_invoice
from .requests import (
    boolean_param,
    check_strings,
    json_response,
    key_id_param,
    read_body,
    reload_keys,
    time_param,
    whole_number_param,
)
from .views import key_view, user_view, utc_text

if TYPE_CHECKING:
    from ..db.store import Store

EXPORTS = web.AppKey("exports", ExportSlots)  # the export slots of this app

log = logging.getLogger("aigateway")
CREATE_FIELDS = {
    "user", "name", "role", "expires_at", "expires_days", "models", "budget", "priority",
    *LIMIT_FIELDS,
}  # fmt: skip
UPDATE_FIELDS = {"role", "expires_at", "models", "priority", *LIMIT_FIELDS}
USER_FIELDS = frozenset({"user", "email", "note", "disabled", "budget", "priority"})
MODELS_TIMEOUT_S = 10.0
EXPORT_MAX = 100_000  # records in one download
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_admin_routes(app: web.Application, prefix: str) -> None:
    router = app.router
    routes = (
        ("GET", "/me", me),
        ("GET", "/me/keys", self_service(list_own_keys)),
        ("POST", "/me/keys", self_service(create_own_key)),
        ("DELETE", "/me/keys/{id}", self_service(revoke_own_key)),
        ("GET", "/keys", admin_only(list_keys)),
        ("POST", "/keys", admin_only(create_key)),
        ("GET", "/keys/{id}", admin_only(get_key)),
        ("PATCH", "/keys/{id}", admin_only(update_key)),
        ("DELETE", "/keys/{id}", admin_only(revoke_key)),
        ("GET", "/stats", admin_only(stats)),
        ("GET", "/series", series),
        ("GET", "/usage", usage_records),
        ("GET", "/users", admin_only(list_users)),
        ("POST", "/users", admin_only(create_user)),
        ("GET", "/users/{name}", admin_only(get_user)),
        ("PATCH", "/users/{name}", admin_only(update_user)),
        ("GET", "/users/{name}/budget", admin_only(user_budget)),
        ("GET", "/users/{name}/invoice", admin_only(invoice)),
        ("GET", "/models", models),
        ("GET", "/upstreams", admin_only(upstreams)),
        ("GET", "/now", admin_only(now_view)),
        ("POST", "/now/{id}/stop", admin_only(now_stop)),
        ("GET", "/prices", admin_only(list_prices)),
        ("POST", "/prices", admin_only(set_price)),
        ("DELETE", "/prices", admin_only(remove_price)),
    )
    app[EXPORTS] = ExportSlots()
    for method, path, handler in routes:
        router.add_route(method, prefix + path, handler, expect_handler=defer_continue)


def admin_only(handler: Handler) -> Handler:
    translated = answering_store_errors(handler)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if principal(request).role != "admin":
            raise Forbidden("this route needs an admin key")
        return await translated(request)

    guarded.__name__ = handler.__name__
    return guarded


def self_service(handler: Handler) -> Handler:
    """A route of self-service keys: who may use it is the service's to say (a
    NotPermittedError is 403), as it says it for every caller."""
    return answering_store_errors(handler)


def answering_store_errors(handler: Handler) -> Handler:
    """The store's refusals as the API's statuses."""

    async def translated(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidInputError as exc:
            raise BadRequest(str(exc)) from None
        except NotPermittedError as exc:
            raise Forbidden(str(exc)) from None
        except KeyNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except (DuplicateKeyError, AmbiguousKeyError, CapReachedError) as exc:
            raise Conflict(str(exc)) from None

    translated.__name__ = handler.__name__
    return translated


# --- handlers ------------------------------------------------------------------------------


async def _current_use(
    request: web.Request, records: list[KeyRecord], now: float
) -> list[dict[str, object]]:
    """Each key's use against its limits: across all gateways where they share limits
    (PostgreSQL), else this gateway's own counts (also while the database is away)."""
    limiter = request.app[LIMITER]
    own = [limiter.usage_of(record, now) for record in records]
    shared = request.app[RELAY].shared
    if shared is None or not records:
        return own
    try:
        counts = await shared.current([record.id for record in records])
    except SHARED_LIMITS_AWAY:
        return own
    return [{**use, **counts.get(record.id, {})} for record, use in zip(records, own, strict=True)]


async def me(request: web.Request) -> web.Response:
    caller = principal(request)
    now = time.time()
    store = request.app[STORE]
    own = caller.id
    relay_budgets = request.app[RELAY].budgets
    cap = request.app[SETTINGS].self_service_keys
    return json_response(
        {
            "key": key_view(caller),
            "current": (await _current_use(request, [caller], now))[0],
            # The key's own budget and its user's, as this gateway reckons them now.
            "currency": request.app[SETTINGS].currency,
            "budgets": [
                {"owner": line.owner.partition(":")[0], **relay_budgets.view(line, now)}
                for line in caller.budgets
            ],
            "usage": await own_usage(store, own, now),
            # How many keys it may make of its own (/admin/me/keys); null: none.
            "self_service_keys": cap if service.may_make_keys(caller, cap) else None,
        }
    )


async def own_usage(store: Store, key_id: int, now: float) -> dict[str, object]:
    """One key's usage: the last 24 hours, 7 days, all time, and per model over 7 days
    (/admin/me's usage, and the compatible /api/stats)."""
    return {
        "last_24h": _totals_or_zeros(
            await store.usage_summary((), UsageQuery(now - DAY, key_id=key_id))
        ),
        "last_7d": _totals_or_zeros(
            await store.usage_summary((), UsageQuery(now - 7 * DAY, key_id=key_id))
        ),
        "all_time": _totals_or_zeros(await store.usage_summary((), UsageQuery(key_id=key_id))),
        "per_model_7d": await store.usage_summary(
            ("model",), UsageQuery(now - 7 * DAY, key_id=key_id)
        ),
    }


async def list_keys(request: web.Request) -> web.Response:
    return json_response({"keys": [key_view(r) for r in await request.app[STORE].list_keys()]})


async def get_key(request: web.Request) -> web.Response:
    """The key, and its refusals (`refused`) since `since` (default: 7 days ago)."""
    store = request.app[STORE]
    record = await store.get_key(key_id_param(request))
    return json_response({**key_view(record), "refused": await _refused(request, key_id=record.id)})


async def create_key(request: web.Request) -> web.Response:
    body = await read_body(request, CREATE_FIELDS, required=frozenset({"user", "name"}))
    for field in ("user", "name", "role"):
        if field in body and not isinstance(body[field], str):
            raise BadRequest(f"{field} must be a string")
    expires_at = _expiry(body)
    limits = KeyLimits(**{field: body.get(field) for field in LIMIT_FIELDS})
    record, secret = await service.create_key(
        request.app[STORE],
        body["user"],
        body["name"],
        body.get("role", "user"),
        expires_at,
        limits,
        body.get("models"),
        _budget(body),
        body.get("priority"),
    )
    await reload_keys(request)
    return json_response({"key": secret, **key_view(record)}, status=201)


async def update_key(request: web.Request) -> web.Response:
    key_id = key_id_param(request)
    body = await read_body(request, UPDATE_FIELDS | {"expires_days", "budget"})
    changes = {field: body[field] for field in UPDATE_FIELDS if field in body}
    if "expires_at" in body or "expires_days" in body:
        changes["expires_at"] = _expiry(body)
    if "budget" in body:
        changes["budget"] = _budget(body)
    record = await service.change_key(request.app[STORE], key_id, changes)
    await reload_keys(request)
    return json_response(key_view(record))


async def revoke_key(request: web.Request) -> web.Response:
    record = await service.revoke_key(request.app[STORE], key_id_param(request))
    await reload_keys(request)
    return json_response(key_view(record))


async def list_own_keys(request: web.Request) -> web.Response:
    """The keys the calling key made (revoked ones too), and how many may be active."""
    caller, cap = principal(request), request.app[SETTINGS].self_service_keys
    made = await service.own_keys(request.app[STORE], caller, cap)
    active = sum(1 for record in made if record.status() == "active")
    return json_response({"allowed": cap, "active": active, "keys": [key_view(r) for r in made]})


async def create_own_key(request: web.Request) -> web.Response:
    """A key of the caller's own user, no more than the caller (service.create_own_key)."""
    body = await read_body(request, CREATE_FIELDS, required=frozenset({"name"}))
    check_strings(body, ("user", "name", "role"))
    asked = {f: body[f] for f in service.OWN_KEY_FIELDS - {"budget", "expires_at"} if f in body}
    if "expires_at" in body or "expires_days" in body:
        asked["expires_at"] = _expiry(body)
    if "budget" in body:
        asked["budget"] = _budget(body)
    record, secret = await service.create_own_key(
        request.app[STORE],
        principal(request),
        request.app[SETTINGS].self_service_keys,
        request.app[LIMITER].defaults,
        asked,
    )
    await reload_keys(request)
    return json_response({"key": secret, **key_view(record)}, status=201)


async def revoke_own_key(request: web.Request) -> web.Response:
    record = await service.revoke_own_key(
        request.app[STORE], principal(request), key_id_param(request)
    )
    await reload_keys(request)
    return json_response(key_view(record))


async def list_users(request: web.Request) -> web.Response:
    return json_response({"users": [user_view(u) for u in await request.app[STORE].list_users()]})


async def get_user(request: web.Request) -> web.Response:
    """The user, and its keys' refusals (`refused`) since `since` (default: 7 days ago)."""
    user = await request.app[STORE].get_user(request.match_info["name"])
    return json_response({**user_view(user), "refused": await _refused(request, user=user.name)})


async def _refused(
    request: web.Request, key_id: int | None = None, user: str | None = None
) -> dict[str, object]:
    """Refusals of one key or user for the request's since/until, 7 days by default."""
    since = time_param(request, "since")
    if since is None:
        since = time.time() - 7 * DAY
    until = time_param(request, "until")
    found = await request.app[STORE].refused_summary(since, until, key_id, user)
    return {"since": since, "until": until, **found}


async def create_user(request: web.Request) -> web.Response:
    body = await read_body(request, USER_FIELDS - {"disabled"}, required=frozenset({"user"}))
    check_strings(body, ("user", "email", "note"))
    budget = _budget(body)
    store = request.app[STORE]
    priority = body.get("priority")
    user = await service.create_user(
        store, body["user"], body.get("email"), body.get("note"), budget, priority
    )
    if budget is not None or priority:
        await reload_keys(request)
    return json_response(user_view(user), status=201)


async def update_user(request: web.Request) -> web.Response:
    """Change email or note, and disable (`"disabled": true`: every key of the user stops
    working, on every gateway within a second) or enable the user."""
    name = request.match_info["name"]
    body = await read_body(request, USER_FIELDS - {"user"})
    check_strings(body, ("email", "note"))
    fields = ("email", "note", "disabled", "priority")
    changes: dict[str, object] = {f: body[f] for f in fields if f in body}
    if "budget" in body:
        changes["budget"] = _budget(body)
    user = await service.change_user(request.app[STORE], name, changes)
    if body.keys() & {"budget", "disabled", "priority"}:
        await reload_keys(request)
    return json_response(user_view(user))


async def usage_records(request: web.Request) -> web.StreamResponse:
    """Usage records, newest first, filtered by user, key_id, model, route, status,
    cached, since and until (Unix times), a page at a time (limit, at most 500; offset), or with
    format=csv or json all of them (at most EXPORT_MAX) as a download. An admin sees
    every key's records, any other key its own."""
    q = request.query
    caller = principal(request)
    where = usage_filter(request)
    store = request.app[STORE]
    fmt = q.get("format")
    if fmt is not None:
        if fmt not in ("csv", "json"):
            raise BadRequest("format must be csv or json")
        with request.app[EXPORTS].slot(caller.id):
            return await _download(request, where, fmt)
    limit = whole_number_param(q, "limit", 500) or 50
    offset = whole_number_param(q, "offset", 10**9) or 0
    found = await store.usage_page(where, limit + 1, offset)
    refused = await _refused_of(store, where)
    return json_response(
        {
            "records": [
                {"id": record_id, "time": utc_text(record.ts), **record._asdict()}
                for record_id, record in found[:limit]
            ],
            "limit": limit,
            "offset": offset,
            "more": len(found) > limit,
            "refused": refused,
        }
    )


def usage_filter(request: web.Request) -> UsageQuery:
    """The records a request's query picks: by user, key_id, model, route, status, cached
    (true or false), since and until (Unix times). The one reading of a usage filter, for
    the records and their breakdowns alike; a key that is not an admin's picks its own
    records only."""
    q = request.query
    caller = principal(request)
    key_id = whole_number_param(q, "key_id", 10**18)
    user = q.get("user") or None
    if caller.role != "admin":
        key_id, user = caller.id, None
    return UsageQuery(
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        key_id=key_id,
        user=user,
        # (any spelling of a model finds its records: they hold its one identity)
        model=identity(q["model"]) if q.get("model") else None,
        route=_recorded_route(q["route"], request.app[SETTINGS].base_path)
        if q.get("route")
        else None,
        status=whole_number_param(q, "status", 999),
        cached=boolean_param(q, "cached"),
    )


async def _refused_of(store: Store, where: UsageQuery) -> dict[str, Any] | None:
    """The refusals of a filter's period, key and user; None when it picks by model,
    route, status or cached: refusals have none of their own, so none match such a
    filter."""
    if (where.model, where.route, where.status, where.cached) != (None, None, None, None):
        return None
    return await store.refused_summary(where.since, where.until, where.key_id, where.user)


def _recorded_route(text: str, base_path: str) -> str:
    """Records name a route by its path under Ollama's /api or /v1 (`/chat`,
    `/chat/completions`); a filter may name it so or by the path a client calls
    (`/api/chat`, `/v1/chat/completions`, under BASE_PATH), which is cut to that."""
    v1 = base_path.rsplit("/", 1)[0] + "/v1"
    for prefix in (base_path, v1):
        if text.startswith(prefix + "/"):
            return text[len(prefix) :]
    return text


async def _download(request: web.Request, where: UsageQuery, fmt: str) -> web.StreamResponse:
    """The records as a file, streamed a chunk at a time (newest first, at most
    EXPORT_MAX). A database failing before the first row answers as any error does;
    after it, the transfer is cut (no last chunk), so no client takes what it got for a
    whole file."""
    exports = request.app[EXPORTS]
    chunks = request.app[STORE].usage_chunks(where, newest_first=True, most=EXPORT_MAX)
    text = UsageText(fmt)
    context = request[CONTEXT]

    async def next_piece() -> bytes | None:
        """The next chunk as text, read and written in a turn: however many exports
        run, only a few read at once (the event loop and the GIL stay free)."""
        async with exports.turn:
            records = await anext(chunks, None)
            return None if records is None else text.rows(records).encode()

    try:
        first = await next_piece()
        response = web.StreamResponse(
            headers={"Content-Disposition": f'attachment; filename="usage.{fmt}"'}
        )
        response.content_type = "text/csv" if fmt == "csv" else "application/json"
        response.charset = "utf-8"
        await response.prepare(request)
        context.bytes_out = 0
        try:
            piece: bytes | None = text.head().encode() + (first or b"")
            while piece is not None:
                await response.write(piece)
                context.bytes_out += len(piece)
                piece = await next_piece()
            await response.write(text.tail().encode())
            await response.write_eof()
        except ConnectionResetError:
            context.client_gone = True
        except Exception as exc:  # the database, midway: a cut, never a file that ends well
            log.warning(
                "rid=%s usage export cut after %d records: %s",
                context.request_id,
                text.count,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            if request.transport is not None:
                request.transport.close()  # after what is buffered: no last chunk
        return response
    finally:
        await chunks.aclose()


async def series(request: web.Request) -> web.Response:
    """Requests, tokens, cost, errors and early leaves per hour over the last `hours`
    (default 24, at most 2160): an admin sees every key's, or one key's with `key_id`
    (its own); any other key its own. With `range` (or `split`, `scope`, `top`): the
    charts' buckets, see charts.py."""
    if not CHART_PARAMS.isdisjoint(request.query):
        if "hours" in request.query:
            raise BadRequest("hours or range, not both")
        return await chart_series(request)
    raw = request.query.get("hours", "24")
    if not raw.isdigit() or not 1 <= int(raw) <= 2160:
        raise BadRequest(f"hours must be a whole number from 1 to 2160, not {raw[:20]!r}")
    caller = principal(request)
    key_id = whole_number_param(request.query, "key_id", 10**18)
    if caller.role != "admin":
        key_id = caller.id
    since = time.time() - int(raw) * 3600
    rows = await request.app[STORE].usage_series(since, 3600, key_id)
    return json_response({"bucket_seconds": 3600, "since": since, "series": rows})


async def user_budget(request: web.Request) -> web.Response:
    """A user's budget and what it and each of its keys spent in its period, by the
    usage records written so far."""
    report = await user_budget_report(
        request.app[STORE], request.match_info["name"], request.app[SETTINGS].currency
    )
    return json_response(report)


async def invoice(request: web.Request) -> web.Response:
    """A user's usage per model and its total cost from `since` (default: the start of
    this month, UTC) until `until` (default: now), Unix times."""
    until = time_param(request, "until")
    since = time_param(request, "since")
    if since is None:
        since = float(period_start("monthly", until or time.time()))
    if until is not None and until <= since:
        raise BadRequest("until must be after since")
    document = await user_invoice(
        request.app[STORE], request.match_info["name"], request.app[SETTINGS].currency, since, until
    )
    return json_response(document)


async def models(request: web.Request) -> web.Response:
    """For any key: the models the upstreams have that the key may use (its allow-list,
    and Ollama's cloud models only where they are allowed), each with what Ollama says of
    it, its context length as the last sync-models found it, and its price (micro-units
    of the currency; null: free). A cloud API's models (its /models, cut down to those it
    is configured to serve) come after the Ollamas', with nothing but their names. Then
    the key's aliases of those models (`aliases`: name and target)."""
    prices = request.app[KEY_TABLE].prices
    synced = await synced_models(request.app[STORE])
    shown = []
    for entry in await usable_models(request):
        name = entry["name"]
        details = entry["details"] if isinstance(entry.get("details"), dict) else {}
        price = prices.for_model(name)
        info = synced.get(identity(name))
        shown.append(
            {
                "name": name,
                "family": details.get("family"),
                "parameter_size": details.get("parameter_size"),
                "quantization_level": details.get("quantization_level"),
                "size": entry.get("size"),
                "context_length": None if info is None else info.context_length,  # until sync
                "price": None if price is None else price_view(price),
            }
        )
    usable = {identity(entry["name"]) for entry in shown}
    aliases = [
        {"name": alias.name, "target": alias.target}
        for alias in request.app[KEY_TABLE].aliases.for_caller(principal(request))
        if alias.target in usable  # (as /api/tags shows them)
    ]
    currency = request.app[SETTINGS].currency
    return json_response({"currency": currency, "models": shown, "aliases": aliases})


async def usable_models(request: web.Request) -> list[dict[str, Any]]:
    """The entries of the upstreams' model lists (Ollama's /api/tags, every Ollama's when
    there are several, then the cloud APIs' models) that the caller's key may use: cut
    down by the one filter /api/tags itself goes through (filter_model_list). Each entry
    is as its upstream listed it, with its `name` set."""
    caller = principal(request)
    settings = request.app[SETTINGS]
    pool = request.app[RELAY].pool
    if not any(u.config.kind == "ollama" for u in pool.upstreams):
        body, status = b'{"models":[]}', 200  # cloud APIs only
    elif pool.single:
        body, status = await _ollama_tags(request)
    else:
        body, status = await union_of_lists(pool, TAGS), 200  # every Ollama's
    if status != 200:
        raise UpstreamUnreachable(f"Ollama answered /api/tags with status {status}")
    try:
        found = orjson.loads(body).get("models")
    except (orjson.JSONDecodeError, AttributeError):
        found = None
    if not isinstance(found, list):
        raise UpstreamUnreachable("Ollama's /api/tags is not a model list")
    listed_names = {first_text_field(e, ("name", "model")) for e in found if isinstance(e, dict)}
    known = {identity(name) for name in listed_names if name is not None}
    found += [
        entry
        for entry in await _cloud_api_models(pool, MODELS_TIMEOUT_S)
        if identity(entry["name"]) not in known  # (each model once, the Ollamas' first)
    ]
    usable = filter_model_list(
        orjson.dumps({"models": found}), caller.models, settings.allow_cloud_models
    )
    entries = []
    for entry in orjson.loads(usable)["models"]:
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str):
            entries.append({**entry, "name": name})
    return entries


async def synced_models(store: Store) -> dict[str, ModelInfo]:
    """What the last sync-models found of each model, by the model's one identity."""
    synced, _ = await store.list_models()
    return {identity(info.name): info for info in synced}


async def upstreams(request: web.Request) -> web.Response:
    """Each upstream: up or out and why, its last check, requests in flight and waiting,
    its models and those loaded (with one upstream, which is never checked: its probe's
    answer and loaded models, asked at most once an interval, and no model list). What
    the dashboard's Overview shows: no upstream call per viewer refresh."""
    pool = request.app[RELAY].pool
    return json_response({"checked": not pool.single, "upstreams": await pool.states()})


async def _cloud_api_models(pool: Pool, timeout: float) -> list[dict[str, str]]:
    """The models of the cloud APIs that are up, as entries of an Ollama model list: each
    one's /models (read as hostile input), cut down to the patterns it is configured
    with; one that does not answer is left out."""
    clouds = [u for u in pool.upstreams if u.config.kind != "ollama" and u.up]
    answers = await asyncio.gather(
        *(pool.names(u, "/models", "data", timeout) for u in clouds), return_exceptions=True
    )
    entries = []
    for upstream, names in zip(clouds, answers, strict=True):
        if isinstance(names, CheckFailed):
            continue
        if isinstance(names, BaseException):
            raise names
        entries += [{"name": name, "model": name} for name in names if upstream.serves(name)]
    return entries


async def _ollama_tags(request: web.Request) -> tuple[bytes, int]:
    """The one Ollama's /api/tags."""
    pool = request.app[RELAY].pool
    try:
        status, body = await pool.fetch(pool.upstreams[0], "/api/tags", MODELS_TIMEOUT_S)
    except (UpstreamFailed, CheckFailed):
        raise UpstreamUnreachable("Ollama did not answer /api/tags") from None
    return body, status


async def list_prices(request: web.Request) -> web.Response:
    prices = await request.app[STORE].list_prices()
    return json_response(
        {"currency": request.app[SETTINGS].currency, "prices": [price_view(p) for p in prices]}
    )


async def set_price(request: web.Request) -> web.Response:
    """Add or replace a pattern's price; amounts are whole micro-units (1.5 USD is
    1500000), absent ones 0. (Patterns go in the body: model names may hold slashes.)"""
    body = await read_body(request, {"pattern", *PRICE_FIELDS}, required=frozenset({"pattern"}))
    check_strings(body, ("pattern",))
    if body["pattern"] is None:
        raise BadRequest("pattern must be a string")
    price = Price(body["pattern"], **{f: body.get(f, 0) for f in PRICE_FIELDS})
    stored = await request.app[STORE].set_price(price)
    await reload_keys(request)
    return json_response(price_view(stored))


async def remove_price(request: web.Request) -> web.Response:
    pattern = request.query.get("pattern")
    if not pattern:
        raise BadRequest("name the price to remove: DELETE /admin/prices?pattern=llama3*")
    await request.app[STORE].remove_price(pattern)
    await reload_keys(request)
    return json_response({"removed": pattern})


def price_view(price: Price) -> dict[str, Any]:
    return {"pattern": price.pattern, **{f: getattr(price, f) for f in PRICE_FIELDS}}


STATS_PARTS = (
    "totals", "last_24h", "last_7d", "per_user", "per_key", "per_model", "per_route",
    "rate_limits", "refused",
)  # fmt: skip


async def stats(request: web.Request) -> web.Response:
    """Usage statistics of the records a filter picks (user, key_id, model, route,
    status, since, until: the filter of /admin/usage), of those of the last 24 hours and
    7 days, and each active key's use now; `parts` (comma-separated) computes only the
    sections named; `percentiles=false` leaves out p50 and p95 (null), which cost most of
    what a long period takes."""
    wanted = _parts(request.query.get("parts"))
    raw = request.query.get("percentiles", "true")
    if raw not in ("true", "false"):
        raise BadRequest(f"percentiles must be true or false, not {raw[:20]!r}")
    where = usage_filter(request)
    return json_response(await stats_document(request, wanted, where, percentiles=raw == "true"))


async def stats_document(
    request: web.Request, wanted: Set[str], where: UsageQuery, percentiles: bool = True
) -> dict[str, object]:
    """The sections of STATS_PARTS named in `wanted`, of the records `where` picks
    (/admin/stats, and the compatible /api/admin/stats)."""
    store = request.app[STORE]
    now = time.time()

    async def summary(*group_by: str) -> list[dict[str, object]]:
        return await store.usage_summary(group_by, where, percentiles=percentiles)

    async def recent(seconds: float) -> dict[str, object]:
        """The filter's records of the last `seconds`, whatever its period."""
        period = replace(where, since=now - seconds, until=None)
        return _totals_or_zeros(await store.usage_summary((), period, percentiles=percentiles))

    async def rate_limits() -> list[dict[str, object]]:
        keys = [k for k in await store.list_keys() if k.status() == "active"]
        uses = await _current_use(request, keys, now)
        return [
            {"key_id": k.id, "user": k.user, "key_name": k.name, **use}
            for k, use in zip(keys, uses, strict=True)
        ]

    sections: dict[str, Callable[[], Awaitable[object]]] = {
        "totals": lambda: _totals_of(summary()),
        "last_24h": lambda: recent(DAY),
        "last_7d": lambda: recent(7 * DAY),
        "per_user": lambda: summary("user"),
        "per_key": lambda: summary("user", "key_name", "key_id"),
        "per_model": lambda: summary("model"),
        "per_route": lambda: summary("route"),
        "rate_limits": rate_limits,
        "refused": lambda: _refused_of(store, where),
    }
    document: dict[str, object] = {
        "since": where.since,
        "until": where.until,
        "in_flight": len(request.app[RELAY].in_flight),  # on this gateway, now
    }
    for part in STATS_PARTS:
        if part in wanted:
            document[part] = await sections[part]()
    return document


def _parts(raw: str | None) -> set[str]:
    if raw is None:
        return set(STATS_PARTS)
    named = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = named - set(STATS_PARTS)
    if unknown or not named:
        raise BadRequest(f"parts are some of {', '.join(STATS_PARTS)}")
    return named


async def _totals_of(rows: Awaitable[list[dict[str, object]]]) -> dict[str, object]:
    return _totals_or_zeros(await rows)


# --- helpers -------------------------------------------------------------------------------


def _budget(body: dict[str, Any]) -> Budget | None:
    """The body's `budget`: null (none), or an object of amount, period, alert_percent."""
    value = body.get("budget")
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"amount", "period", "alert_percent"}:
        raise BadRequest(
            'budget must be null or {"amount": micro-units, "period": "total", "daily",'
            ' "weekly" or "monthly", "alert_percent": 1-100 (optional)}'
        )
    try:
        return check_budget(
            value.get("amount"), value.get("period", "monthly"), value.get("alert_percent")
        )
    except BudgetError as exc:
        raise BadRequest(str(exc)) from None


def _expiry(body: dict[str, Any]) -> float | None:
    if "expires_at" in body and "expires_days" in body:
        raise BadRequest("give expires_at or expires_days, not both")
    if body.get("expires_days") is not None:
        days = body["expires_days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 0 < days <= 36500:
            raise BadRequest("expires_days must be a whole number from 1 to 36500")
        return time.time() + days * DAY
    value = body.get("expires_at")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not time.time() < value < MAX_EXPIRES_AT
    ):
        raise BadRequest("expires_at must be a Unix time in the future (before 10000), or null")
    return float(value)


def _totals_or_zeros(rows: list[dict[str, object]]) -> dict[str, object]:
    return (
        rows[0]
        if rows
        else {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "avg_ms": None,
            "p50_ms": None,
            "p95_ms": None,
            "ttfb_p50_ms": None,
            "ttfb_p95_ms": None,
            "errors": 0,
            "cost": None,
            "client_gone": 0,
        }
    )
