"""The OpenAPI 3.1 document of everything the gateway answers, at /openapi.json.

Written out here route by route (the admin API, the dashboard's sign-in, health and the
docs themselves); the relayed routes come from the same table the router is built from
(routes.py), each under the dialect it speaks. A test compares the document with the
routes the app really has, both ways, and validates it with openapi-spec-validator.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..protocol.routes import RELAY_ROUTES, RelayRoute
from ..settings import Settings
from .openapi_schemas import ERROR, OBJECT, REFUSED, SCHEMAS, SERIES

KEY: list[dict[str, list[str]]] = [{"bearerKey": []}, {"apiKeyHeader": []}, {"sessionCookie": []}]
NONE: list[dict[str, list[str]]] = []

TAGS = [
    {"name": "Ollama", "description": "Ollama's own API, relayed byte for byte."},
    {"name": "OpenAI-compatible", "description": "Ollama's OpenAI-compatible /v1 routes."},
    {"name": "Anthropic-compatible", "description": "Ollama's Anthropic-compatible route."},
    {"name": "Admin", "description": "Keys, users, prices, usage (JSON; money in micro-units)."},
    {
        "name": "Compatible",
        "description": "The API of the systems aigateway replaces, under BASE_PATH"
        " (SEED_API=off turns it off): see docs/compat-api.md.",
    },
    {"name": "Dashboard", "description": "The dashboard's page, files and sign-in."},
    {"name": "Health", "description": "Liveness and Ollama's health."},
    {"name": "Docs", "description": "This document and its viewers."},
]
_DIALECT_TAGS = {
    "ollama": "Ollama",
    "openai": "OpenAI-compatible",
    "anthropic": "Anthropic-compatible",
}


def _operation(
    summary: str,
    tag: str,
    security: list[dict[str, list[str]]],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    content: str = "application/json",
    ok: tuple[str, str, dict[str, Any] | None] = ("200", "OK", OBJECT),
    errors: tuple[str, ...] = (),
) -> dict[str, Any]:
    code, description, schema = ok
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {content: {"schema": schema}}
    responses: dict[str, Any] = {code: answer}
    for status in errors:
        responses[status] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": ERROR}},
        }
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "security": security,
        "responses": responses,
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


_ERROR_TEXT = {
    "400": "Bad input",
    "401": "No valid key or session",
    "402": "A budget is exhausted",
    "403": "Not allowed for this key",
    "404": "Not found",
    "409": "Already exists, or names several",
    "413": "Body too large",
    "429": "A rate limit or quota is reached",
    "502": "Ollama failed",
    "503": "Not available now",
}
_AUTH = ("401",)
_ADMIN = ("401", "403")


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


def _in_path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _collection(noun: str, item: str, change: str, listing: dict[str, Any]) -> dict[str, Any]:
    """GET (every one) and POST (create) of an admin collection."""
    return {
        "get": _operation(f"Every {noun}", "Admin", KEY, ok=("200", "OK", listing), errors=_ADMIN),
        "post": _operation(
            f"Create a {noun}" + ("; the key is in the answer, once" if noun == "key" else ""),
            "Admin",
            KEY,
            body=_ref(change),
            ok=("201", "Created", _ref(item)),
            errors=(*_ADMIN, "400", "409"),
        ),
    }


def _one(
    noun: str, item: str, change: str, params: list[dict[str, Any]], summary: str
) -> dict[str, Any]:
    """GET and PATCH of one item of an admin collection (GET: with its refusals in
    since/until)."""
    period = [
        _query("since", "number", "its refusals from this Unix time (default: 7 days ago)"),
        _query("until", "number", "its refusals before this Unix time"),
    ]
    return {
        "get": _operation(
            f"One {noun}, with its refusals",
            "Admin",
            KEY,
            params=[*params, *period],
            ok=("200", "OK", _ref(item)),
            errors=(*_ADMIN, "404"),
        ),
        "patch": _operation(
            summary,
            "Admin",
            KEY,
            params=params,
            body=_ref(change),
            ok=("200", "OK", _ref(item)),
            errors=(*_ADMIN, "400", "404"),
        ),
    }


def _admin_paths(prefix: str) -> dict[str, dict[str, Any]]:
    since = _query("since", "number", "Unix time, inclusive")
    until = _query("until", "number", "Unix time, exclusive")
    # Which records: the one filter of the records and of their statistics.
    usage_filter = [
        _query("user", "string", "admins only"),
        _query("key_id", "integer", "admins only"),
        _query("model", "string", "any spelling of the model"),
        _query(
            "route", "string", "as recorded (/chat) or as called (/api/chat, /v1/chat/completions)"
        ),
        _query("status", "integer", ""),
        _query(
            "cached",
            "boolean",
            "true: answered from the response cache; false: by an upstream (statistics"
            " with it are read from the daily sums, with no p50 or p95)",
        ),
        since,
        until,
    ]
    key_id, name = [_in_path("id", "integer")], [_in_path("name")]
    keys_list = {"type": "object", "properties": {"keys": {"type": "array", "items": _ref("Key")}}}
    own_keys = {
        "type": "object",
        "properties": {
            "allowed": {"type": "integer", "description": "SELF_SERVICE_KEYS"},
            "active": {"type": "integer"},
            "keys": {"type": "array", "items": _ref("Key")},
        },
    }
    users_list = {
        "type": "object",
        "properties": {"users": {"type": "array", "items": _ref("User")}},
    }
    a = "Admin"
    paths = {
        "/me": {
            "get": _operation(
                "The calling key, its limits, use, budgets and usage", a, KEY, errors=_AUTH
            )
        },
        "/me/keys": {
            "get": _operation(
                "Self-service: the keys the calling key made, and how many may be active",
                a,
                KEY,
                ok=("200", "OK", own_keys),
                errors=_ADMIN,
            ),
            "post": _operation(
                "Self-service: make a key of the caller's own user, no more than the caller"
                " (expiry, models, limits, budget); the key is in the answer, once",
                a,
                KEY,
                body=_ref("KeyChange"),
                ok=("201", "Created", _ref("Key")),
                errors=(*_ADMIN, "400", "409"),
            ),
        },
        "/me/keys/{id}": {
            "delete": _operation(
                "Self-service: revoke a key the calling key made",
                a,
                KEY,
                params=key_id,
                ok=("200", "OK", _ref("Key")),
                errors=(*_ADMIN, "400"),
            ),
        },
        "/keys": _collection("key", "Key", "KeyChange", keys_list),
        "/keys/{id}": {
            **_one("key", "Key", "KeyChange", key_id, "Change a key"),
            "delete": _operation(
                "Revoke a key (the row stays; and the keys it made by self-service)",
                a,
                KEY,
                params=key_id,
                ok=("200", "OK", _ref("Key")),
                errors=(*_ADMIN, "404"),
            ),
        },
        "/stats": {
            "get": _operation(
                "Usage statistics of the records a filter picks (the filter of /usage),"
                " refusals and each key's use now",
                a,
                KEY,
                params=[
                    *usage_filter,
                    _query("parts", "string", "comma-separated sections to compute (default all)"),
                    _query(
                        "percentiles",
                        "boolean",
                        "false: p50 and p95 left out (null), most of a long period's cost."
                        " They are null too in a section whose filter and grouping no one"
                        " hourly dimension holds (a status; a user's records per model):"
                        " those are read from daily sums, which keep no latencies",
                    ),
                ],
                ok=(
                    "200",
                    "OK",
                    {
                        "type": "object",
                        "properties": {
                            "refused": {
                                "description": "as in /usage: null with a model, route,"
                                " status or cached filter",
                                "anyOf": [REFUSED, {"type": "null"}],
                            }
                        },
                    },
                ),
                errors=(*_ADMIN, "400"),
            )
        },
        "/series": {
            "get": _operation(
                "Usage per hour or UTC day, in total or by model or user, for charts",
                a,
                KEY,
                params=[
                    _query(
                        "range",
                        "string",
                        "24h or 7d (per hour) or 30d (per UTC day): every bucket, the"
                        " current one last, in `starts` and `groups`",
                    ),
                    _query("split", "string", "total (default), model or user (admins)"),
                    _query(
                        "scope",
                        "string",
                        "gateway (admins; their default) or me (the key's own; others' only)",
                    ),
                    _query("top", "integer", "groups named, 1 to 20 (default 5); the rest: other"),
                    _query("hours", "integer", "without range: per hour, 1 to 2160 (sparse)"),
                    _query(
                        "key_id",
                        "integer",
                        "with hours, admins only: this key's (any other key: its own)",
                    ),
                ],
                ok=("200", "OK", SERIES),
                errors=(*_AUTH, "400"),
            )
        },
        "/usage": {
            "get": _operation(
                "Usage records, newest first, filtered and paged, or downloaded",
                a,
                KEY,
                params=[
                    *usage_filter,
                    _query("limit", "integer", "at most 500"),
                    _query("offset", "integer", ""),
                    _query(
                        "format",
                        "string",
                        "csv or json: a download, streamed (at most 2 at once per key: 429)",
                    ),
                ],
                ok=(
                    "200",
                    "OK",
                    {
                        "type": "object",
                        "properties": {
                            "records": {"type": "array", "items": OBJECT},
                            "limit": {"type": "integer"},
                            "offset": {"type": "integer"},
                            "more": {"type": "boolean"},
                            "refused": {
                                "description": "the refusals of the filter's user or key"
                                " and period (a key that is no admin: its own); null with"
                                " a model, route, status or cached filter, which refusals"
                                " lack",
                                "anyOf": [REFUSED, {"type": "null"}],
                            },
                        },
                    },
                ),
                errors=(*_AUTH, "400", "429"),
            )
        },
        "/users": _collection("user", "User", "UserChange", users_list),
        "/users/{name}": _one(
            "user", "User", "UserChange", name, "Change a user: email, note, budget, disabled"
        ),
        "/users/{name}/budget": {
            "get": _operation(
                "A user's budget, spent, remaining, per key",
                a,
                KEY,
                params=name,
                errors=(*_ADMIN, "404"),
            )
        },
        "/users/{name}/invoice": {
            "get": _operation(
                "A user's usage per model and total cost",
                a,
                KEY,
                params=[*name, since, until],
                errors=(*_ADMIN, "400", "404"),
            )
        },
        "/models": {
            "get": _operation(
                "The models the key may use, with prices and metadata",
                a,
                KEY,
                errors=(*_AUTH, "502"),
            )
        },
        "/upstreams": {
            "get": _operation(
                "Each upstream's state: up or out and why, load, models", a, KEY, errors=_ADMIN
            )
        },
        "/now": {
            "get": _operation(
                "Requests in flight on every gateway, each upstream's queue and loaded models",
                a,
                KEY,
                errors=_ADMIN,
            )
        },
        "/now/{id}/stop": {
            "post": _operation(
                "Stop a request in flight, on whichever gateway holds it",
                a,
                KEY,
                params=[_in_path("id")],
                ok=("202", "Accepted: the request is being stopped", OBJECT),
                errors=(*_ADMIN, "404"),
            )
        },
        "/prices": {
            "get": _operation("Prices per model pattern", a, KEY, errors=_ADMIN),
            "post": _operation(
                "Add or replace a price", a, KEY, body=_ref("Price"), errors=(*_ADMIN, "400")
            ),
            "delete": _operation(
                "Remove a price",
                a,
                KEY,
                params=[_query("pattern", "string", "required")],
                errors=(*_ADMIN, "400", "404"),
            ),
        },
        "/cache": {
            "get": _operation(
                "This gateway's response cache: on or off, its settings, what it holds and"
                " did since start (each gateway keeps its own)",
                a,
                KEY,
                ok=("200", "OK", _ref("Cache")),
                errors=_ADMIN,
            ),
            "delete": _operation(
                "Empty this gateway's response cache; 409 when it is off",
                a,
                KEY,
                ok=("200", "OK", _ref("CacheCleared")),
                errors=(*_ADMIN, "409"),
            ),
        },
        "/aliases": {
            "get": _operation("Model aliases", a, KEY, errors=_ADMIN),
            "post": _operation(
                "Add an alias, or point one at another model",
                a,
                KEY,
                body=_ref("Alias"),
                errors=(*_ADMIN, "400", "404"),
            ),
            "delete": _operation(
                "Remove an alias",
                a,
                KEY,
                params=[
                    _query("name", "string", "required"),
                    _query("user", "string", "a user's alias"),
                    _query("key_id", "integer", "a key's alias"),
                ],
                errors=(*_ADMIN, "400", "404"),
            ),
        },
    }
    return {prefix + path: operations for path, operations in paths.items()}


def _compat_paths(prefix: str) -> dict[str, dict[str, Any]]:
    """The API of the systems aigateway replaces (admin/compat.py), under BASE_PATH."""
    c = "Compatible"
    key_list = {
        "type": "object",
        "properties": {"keys": {"type": "array", "items": _ref("CompatKey")}},
    }
    paths = {
        "/models": {
            "get": _operation(
                "The /api/tags entries the key may use, with context_length, description, price",
                c,
                KEY,
                errors=(*_AUTH, "502"),
            )
        },
        "/stats": {
            "get": _operation("The calling key's own usage", c, KEY, errors=_AUTH),
        },
        "/keys": {
            "get": _operation("Every key", c, KEY, ok=("200", "OK", key_list), errors=_ADMIN),
            "post": _operation(
                "Create a key; the key is in the answer, once",
                c,
                KEY,
                body=_ref("CompatKeyCreate"),
                ok=("201", "Created", _ref("CompatKey")),
                errors=(*_ADMIN, "400", "409"),
            ),
        },
        "/keys/{id}": {
            "delete": _operation(
                "Revoke a key named by its id or its 12-character preview",
                c,
                KEY,
                params=[_in_path("id")],
                ok=("200", "OK", _ref("CompatKey")),
                errors=(*_ADMIN, "400", "404", "409"),
            )
        },
        "/admin/stats": {
            "get": _operation(
                "Every key's usage: totals, last 24 h and 7 d, per user", c, KEY, errors=_ADMIN
            )
        },
    }
    return {prefix + path: operations for path, operations in paths.items()}


def _relay_operation(route: RelayRoute, method: str, upstream: str) -> dict[str, Any]:
    tag = _DIALECT_TAGS[route.dialect]
    errors: tuple[str, ...] = ("400", "401", "403", "404", "413", "429", "502", "503")
    if route.kind == "inference":
        errors = (*errors, "402")
    operation = _operation(
        f"Relayed to Ollama's {upstream}",
        tag,
        KEY,
        ok=("200", "Ollama's answer, passed on as it comes (JSON, NDJSON or SSE)", OBJECT),
        errors=errors,
    )
    if "{" in route.path:
        name = route.path.split("{", 1)[1].split("}", 1)[0]
        operation["parameters"] = [_in_path(name)]
    if method in ("POST", "DELETE"):
        if route.stream_request_body:
            content = {"application/octet-stream": {"schema": {"type": "string"}}}
        elif not route.json_body:
            content = {"multipart/form-data": {"schema": OBJECT}}
        else:
            content = {"application/json": {"schema": OBJECT}}
        operation["requestBody"] = {"required": method == "POST", "content": content}
    return operation


def openapi_document(settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}

    def add(path: str, method: str, operation: dict[str, Any]) -> None:
        paths.setdefault(path, {})[method.lower()] = operation

    for route in RELAY_ROUTES:
        upstream = route.ollama_path
        for method in route.methods:
            add(
                settings.client_prefix(route.native) + route.path,
                method,
                _relay_operation(route, method, upstream),
            )
    for path, operations in _admin_paths(settings.admin_path).items():
        for method, operation in operations.items():
            add(path, method, operation)
    if settings.seed_api == "on":
        for path, operations in _compat_paths(settings.client_prefix(native=True)).items():
            for method, operation in operations.items():
                add(path, method, operation)
    probes = ["/"]
    if settings.ollama_prefix:
        probes += [settings.ollama_prefix, settings.ollama_prefix + "/"]
    for path in probes:
        for method in ("GET", "HEAD"):
            add(
                path,
                method,
                _operation(
                    "'Ollama is running' (clients probe it)",
                    "Health",
                    NONE,
                    content="text/plain",
                    ok=("200", "OK", {"type": "string"}),
                ),
            )
    add(
        "/health",
        "GET",
        _operation("Whether the gateway serves (details for an admin key)", "Health", NONE),
    )
    add(
        "/health/ollama",
        "GET",
        _operation("Whether Ollama answers (200, else 503)", "Health", NONE),
    )
    if settings.metrics != "off":
        add(
            "/metrics",
            "GET",
            _operation(
                "Prometheus metrics (METRICS=on: anyone; admin: an admin key)",
                "Health",
                NONE if settings.metrics == "on" else KEY,
                content="text/plain",
                ok=("200", "Prometheus's text format", {"type": "string"}),
                errors=() if settings.metrics == "on" else _ADMIN,
            ),
        )
    html = ("200", "A page", {"type": "string"})
    add("/openapi.json", "GET", _operation("This document", "Docs", NONE))
    add(
        "/docs",
        "GET",
        _operation("Swagger UI for this document", "Docs", NONE, content="text/html", ok=html),
    )
    add(
        "/redoc",
        "GET",
        _operation("ReDoc for this document", "Docs", NONE, content="text/html", ok=html),
    )
    add(
        "/docs/static/{name}",
        "GET",
        {
            **_operation(
                "The viewers' files (served offline)",
                "Docs",
                NONE,
                content="application/octet-stream",
                ok=("200", "A file", {"type": "string"}),
            ),
            "parameters": [_in_path("name")],
        },
    )
    ui = settings.ui_path
    if ui is not None:
        add(
            ui,
            "GET",
            _operation("Redirects to the dashboard", "Dashboard", NONE, ok=("302", "Found", None)),
        )
        add(
            ui + "/",
            "GET",
            _operation("The dashboard", "Dashboard", NONE, content="text/html", ok=html),
        )
        for folder, files in (
            ("/static/", "The dashboard's files"),
            (
                "/static/vendor/",
                "The dashboard's vendored files (uPlot, its stylesheet and licence)",
            ),
        ):
            add(
                ui + folder + "{name}",
                "GET",
                {
                    **_operation(
                        files,
                        "Dashboard",
                        NONE,
                        content="application/octet-stream",
                        ok=("200", "A file", {"type": "string"}),
                    ),
                    "parameters": [_in_path("name")],
                },
            )
        add(
            ui + "/session",
            "POST",
            _operation(
                "Sign in: a key, once, for a session cookie (send X-Requested-With: aigateway)",
                "Dashboard",
                NONE,
                body=_ref("SignIn"),
                errors=("400", "401", "403"),
            ),
        )
        add(ui + "/session", "DELETE", _operation("Sign out", "Dashboard", NONE, errors=("403",)))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aigateway",
            "version": __version__,
            "description": (
                "An authenticating, metering gateway in front of Ollama. Send a key as"
                " `Authorization: Bearer <key>` or `x-api-key: <key>`; the dashboard's"
                " session cookie stands in when neither is sent. Money is in micro-units"
                f" of {settings.currency}."
            ),
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerKey": {"type": "http", "scheme": "bearer", "description": "aig_..."},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "aigateway_session"},
            },
            "schemas": SCHEMAS,
        },
    }
