"""The admin API's model aliases (admin only): GET, POST and DELETE /admin/aliases,
through the one admin service, as the CLIs set them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..http.appkeys import STORE
from ..http.expect import defer_continue
from ..records import Alias
from . import service
from .api import admin_only
from .requests import check_strings, json_response, read_body, reload_keys, whole_number_param


def add_alias_routes(app: web.Application, prefix: str) -> None:
    for method, handler in (("GET", list_aliases), ("POST", set_alias), ("DELETE", remove_alias)):
        guarded = admin_only(handler)
        app.router.add_route(method, prefix + "/aliases", guarded, expect_handler=defer_continue)


async def list_aliases(request: web.Request) -> web.Response:
    aliases = await service.list_aliases(request.app[STORE])
    return json_response({"aliases": [alias_view(a) for a in aliases]})


async def set_alias(request: web.Request) -> web.Response:
    """Make `name` run the model `target`: for everyone, or only for `user`'s keys, or
    only for key `key_id` (the narrowest wins). The same name and owner again: its target
    changes. (Names go in the body: model names may hold slashes.)"""
    body = await read_body(request, ALIAS_FIELDS, required=frozenset({"name", "target"}))
    check_strings(body, ("name", "target", "user"))
    if body["name"] is None or body["target"] is None:
        raise BadRequest("name and target must be model names")
    stored = await service.set_alias(
        request.app[STORE], body["name"], body["target"], body.get("user"), _alias_key(body)
    )
    await reload_keys(request)
    return json_response(alias_view(stored))


async def remove_alias(request: web.Request) -> web.Response:
    """?name=gpt-4o-mini, with &user= or &key_id= for a user's or a key's."""
    query = request.query
    name = query.get("name")
    if not name:
        raise BadRequest("name the alias to remove: DELETE /admin/aliases?name=gpt-4o-mini")
    key_id = whole_number_param(query, "key_id", 10**18)
    gone = await service.remove_alias(request.app[STORE], name, query.get("user"), key_id)
    await reload_keys(request)
    return json_response({"removed": alias_view(gone)})


ALIAS_FIELDS = frozenset({"name", "target", "user", "key_id"})


def _alias_key(body: dict[str, Any]) -> int | None:
    key_id = body.get("key_id")
    if key_id is None:
        return None
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id < 10**18:
        raise BadRequest("key_id must be a key's id")
    return key_id


def alias_view(alias: Alias) -> dict[str, Any]:
    return {
        "name": alias.name,
        "target": alias.target,
        "scope": alias.scope,
        "user": alias.owner if alias.scope == "user" else None,
        "key_id": int(alias.owner) if alias.scope == "key" else None,
        "created_at": alias.created_at,
    }
