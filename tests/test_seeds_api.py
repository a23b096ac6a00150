"""The API of the systems aigateway replaces (admin/compat.py, docs/compat-api.md): their
README's curl examples run verbatim with real curl, and each route's fields, refusals
and switch."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.admin import compat
from aigateway.admin.health import root
from aigateway.admin.openapi import openapi_document
from aigateway.db.keys import looks_like_key
from aigateway.db.store import Store
from aigateway.protocol.routes import RELAY_ROUTES
from aigateway.records import ModelInfo
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key

# The facts of the old systems, a verbatim copy of the brief's file: its sh block is
# their README's examples.
SEEDS = Path(__file__).parent / "data" / "seeds-api.md"
ROUTES = (
    ("GET", "/models"),
    ("GET", "/stats"),
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("DELETE", "/keys/1"),
    ("GET", "/admin/stats"),
)
ADMIN_ROUTES = ROUTES[2:]
Client = TestClient[Request, None]


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama(extra_models=["llama2"])  # the model the old README uses


def seed_commands() -> list[str]:
    """The commands of the seeds file's sh block, continuation lines joined as the shell
    joins them."""
    text = SEEDS.read_text(encoding="utf-8")
    found = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert found is not None, "no sh block in the seeds file"
    commands, current = [], ""
    for line in found.group(1).splitlines():
        if line.endswith("\\"):
            current += line[:-1]
            continue
        commands.append(current + line)
        current = ""
    return [c for c in commands if c.strip()]


async def run_curl(command: str, env: dict[str, str]) -> Any:
    """Run one command in sh (so real curl, quoting as written); its output as JSON."""
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        command,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (command, err)
    return orjson.loads(out)


def _url(gateway: TestServer) -> str:
    return str(gateway.make_url("")).rstrip("/")


async def test_the_old_readme_examples_run_verbatim_with_curl(
    gateway: TestServer, key: str, admin_key: str
) -> None:
    commands = seed_commands()
    assert len(commands) == 7 and all(c.startswith("curl ") for c in commands)
    assert all("http://localhost:8000/api/" in c for c in commands)
    env = {"KEY": key, "ADMIN_KEY": admin_key}
    answers: dict[str, Any] = {}
    for command in commands:
        command = command.replace("http://localhost:8000", _url(gateway))
        if "KEY_PREFIX" in command:
            command = command.replace("KEY_PREFIX", answers["create"]["preview"])
        answer = await run_curl(command, env)
        assert "error" not in answer, (command, answer)
        if '"Production API Key"' in command:
            answers["create"] = answer
        elif "-X DELETE" in command:
            answers["delete"] = answer
        else:
            answers[command.split('"')[1].split("/api/", 1)[1]] = answer
    assert [m["name"] for m in answers["models"]["models"]] == [
        "deepseek-r1:latest",
        "llama3.2:latest",
        "llama2",
    ]
    assert answers["generate"]["done"] is True and answers["generate"]["response"]
    assert answers["stats"]["key"]["name"] == "laptop"
    created = answers["create"]
    assert looks_like_key(created["key"]) and created["preview"] == created["key"][:12]
    assert (created["name"], created["user"], created["role"], created["rate_limit"]) == (
        "Production API Key",
        "Production API Key",
        "user",
        500,
    )
    listed = {k["name"]: k for k in answers["keys"]["keys"]}
    assert listed["Production API Key"]["active"] is True and "key" not in listed["laptop"]
    assert answers["admin/stats"]["totals"]["requests"] >= 0
    assert answers["delete"]["id"] == created["id"] and answers["delete"]["active"] is False
    # The revoked key no longer works.
    env["KEY"] = created["key"]
    gone = await run_curl(commands[2].replace("http://localhost:8000", _url(gateway)), env)
    assert "revoked" in gone["error"]


async def test_models_are_the_keys_allow_list_with_context_description_and_price(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str, admin: Client
) -> None:
    store = await Store.open(db_path)  # (as sync-models would)
    try:
        await store.replace_models(
            [ModelInfo("llama2", "llama", "7B", "Q4_0", 4096, 3825819519, "abc")]
        )
    finally:
        await store.close()
    price = {"pattern": "llama2*", "per_request": 1500}
    assert (await admin.post("/admin/prices", json=price)).status == 200
    limited = await make_key(db_path, "bob", "phone", models=["llama2*", "llama3.2"])
    bob: Client = await aiohttp_client(gateway, headers={"Authorization": f"Bearer {limited}"})
    resp = await bob.get("/api/models")
    assert resp.status == 200
    document = await resp.json()
    by_name = {m["name"]: m for m in document["models"]}
    assert set(by_name) == {"llama2", "llama3.2:latest"}  # deepseek-r1 is not on its list
    llama2 = by_name["llama2"]
    assert llama2["context_length"] == 4096
    assert llama2["description"] == "llama, 7B parameters, Q4_0, context window of 4096 tokens"
    assert llama2["price"]["pattern"] == "llama2*" and llama2["price"]["per_request"] == 1500
    assert llama2["details"]["format"] == "gguf" and llama2["digest"]  # /api/tags' entry
    other = by_name["llama3.2:latest"]
    assert (other["context_length"], other["description"], other["price"]) == (None, None, None)
    assert document["currency"] == "USD"
    # The same filter as /api/tags itself.
    tags = await (await bob.get("/api/tags")).json()
    assert {m["name"] for m in tags["models"]} == set(by_name)


async def test_key_fields_create_list_and_revoke_by_id_or_preview(admin: Client) -> None:
    resp = await admin.post("/api/keys", json={"name": "ci", "user": "carol", "role": "admin"})
    assert resp.status == 201
    created = await resp.json()
    assert set(created) >= {"key", "id", "preview", "name", "role", "rate_limit"}
    assert (created["user"], created["role"], created["rate_limit"]) == ("carol", "admin", None)
    listed = (await (await admin.get("/api/keys")).json())["keys"]
    one = next(k for k in listed if k["id"] == created["id"])
    assert set(one) >= {
        "id", "preview", "name", "user", "role", "rate_limit", "active", "created_at",
        "last_used_at",
    }  # fmt: skip
    assert one["created_at"].endswith("Z") and one["last_used_at"] is None
    assert all("key" not in k and "key_hash" not in k for k in listed)
    by_id = await admin.delete(f"/api/keys/{created['id']}")
    assert by_id.status == 200 and (await by_id.json())["active"] is False
    other = await (await admin.post("/api/keys", json={"name": "other"})).json()
    by_preview = await admin.delete(f"/api/keys/{other['preview']}")
    assert by_preview.status == 200 and (await by_preview.json())["id"] == other["id"]
    again = await admin.delete(f"/api/keys/{other['preview']}")  # revoked: no change
    assert again.status == 200 and (await again.json())["status"] == "revoked"
    for unknown in ("aig_00000000", "nope", "999999"):
        resp = await admin.delete(f"/api/keys/{unknown}")
        assert resp.status == 404 and "error" in await resp.json(), unknown
    assert (await admin.delete("/api/keys/0")).status == 400  # GATEWAY_ADMIN_KEY's
    detail = await admin.get(f"/admin/keys/{other['id']}")
    assert (await detail.json())["status"] == "revoked"


async def test_a_duplicate_key_and_a_shared_preview_are_409(admin: Client, db_path: str) -> None:
    body = {"name": "Production API Key", "rate_limit": 500}
    assert (await admin.post("/api/keys", json=body)).status == 201
    again = await admin.post("/api/keys", json=body)
    assert again.status == 409 and "already has an active key" in (await again.json())["error"]
    first = await (await admin.post("/api/keys", json={"name": "a"})).json()
    second = await (await admin.post("/api/keys", json={"name": "b"})).json()

    def share_preview() -> None:
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE keys SET prefix = ? WHERE id = ?", (first["preview"], second["id"]))

    await asyncio.to_thread(share_preview)
    resp = await admin.delete(f"/api/keys/{first['preview']}")
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert f"keys {first['id']}, {second['id']}" in error
    # Once one of them is revoked (by id), the preview names the other.
    assert (await admin.delete(f"/api/keys/{second['id']}")).status == 200
    resp = await admin.delete(f"/api/keys/{first['preview']}")
    assert resp.status == 200 and (await resp.json())["id"] == first["id"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "JSON object"),
        (b'{"role": "user"}', "missing field(s): name"),
        (b'{"name": 7}', "name must be a string"),
        (b'{"name": "x", "user": ["a"]}', "user must be a string"),
        (b'{"name": "x", "role": "root"}', "role must be one of"),
        (b'{"name": "x", "rate_limit": -1}', "rate_limit must be a whole number"),
        (b'{"name": "x", "rate_limit": 1.5}', "rate_limit must be a whole number"),
        (b'{"name": "x", "rate_limit": "500"}', "rate_limit must be a whole number"),
        (b'{"name": "x", "rate_limit": true}', "rate_limit must be a whole number"),
        (b'{"name": "x", "rate_limit": 10000000000000}', "rate_limit must be a whole number"),
        (b'{"name": "x", "rate_limit": 1e400}', "not valid JSON"),
        (b'{"name": "x", "rate_limit": 99999999999999999999999}', "rate_limit must be"),
        (b'{"name": "x", "expires": 1}', "unknown field(s): expires"),
        (b'{"name": ""}', "must not be empty"),
        (b'{"name": " padded"}', "blanks"),
        (b'{"name": "' + b"x" * 65 + b'"}', "at most 64"),
        (b'{"name": "a\\nb"}', "control characters"),
    ],
)
async def test_hostile_bodies_are_400_with_a_clear_error(
    admin: Client, body: bytes, says: str
) -> None:
    resp = await admin.post("/api/keys", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert says in (await resp.json())["error"]
    assert not [k for k in (await (await admin.get("/api/keys")).json())["keys"] if k["id"] > 2]


async def test_a_user_key_is_refused_on_admin_routes_and_no_key_anywhere(
    client: Client, anon: Client, aiohttp_client: AiohttpClient, gateway: TestServer
) -> None:
    for method, path in ADMIN_ROUTES:
        resp = await client.request(method, "/api" + path, json={"name": "x"})
        assert resp.status == 403, path
        assert "admin key" in (await resp.json())["error"]
    wrong = {"Authorization": "Bearer aig_not-a-real-key"}
    bad: Client = await aiohttp_client(gateway, headers=wrong)
    for method, path in ROUTES:
        for caller in (anon, bad):
            resp = await caller.request(method, "/api" + path)
            assert resp.status == 401, (method, path)
            assert "error" in await resp.json()


async def test_an_expired_key_is_refused(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str
) -> None:
    old = await make_key(db_path, "dan", "old", expires_at=1.0)
    dan: Client = await aiohttp_client(gateway, headers={"Authorization": f"Bearer {old}"})
    for path in ("/api/models", "/api/stats"):
        resp = await dan.get(path)
        assert resp.status == 401 and "expired" in (await resp.json())["error"]


async def test_stats_are_the_callers_own_and_everyones_without_usage_of_their_own(
    client: Client, admin: Client, gateway: TestServer
) -> None:
    chat = {"model": "llama3.2", "stream": False, "messages": []}
    assert (await client.post("/api/chat", json=chat)).status == 200
    usage = gateway.app[RELAY].usage
    await usage.flush()
    for _ in range(2):
        for method, path in ROUTES:
            if method == "GET":
                assert (await admin.get("/api" + path)).status == 200, path
        assert (await client.get("/api/stats")).status == 200
    await usage.flush()
    records = (await (await admin.get("/admin/usage")).json())["records"]
    assert [r["route"] for r in records] == ["/chat"]  # admin/info calls are not usage
    mine = await (await client.get("/api/stats")).json()
    assert (mine["key"]["user"], mine["key"]["name"]) == ("alice", "laptop")
    assert mine["usage"]["last_24h"]["requests"] == 1
    assert set(mine["usage"]) == {"last_24h", "last_7d", "all_time", "per_model_7d"}
    assert (await (await admin.get("/api/stats")).json())["usage"]["all_time"]["requests"] == 0
    everyone = await (await admin.get("/api/admin/stats")).json()
    assert set(everyone) >= {"totals", "last_24h", "last_7d", "per_user", "active_keys"}
    assert everyone["totals"]["requests"] == everyone["last_7d"]["requests"] == 1
    assert [(u["user"], u["requests"]) for u in everyone["per_user"]] == [("alice", 1)]
    assert everyone["active_keys"] == 2


@pytest.mark.parametrize("base", ["/api", "/ollama/api"])
async def test_under_the_base_path_and_off_with_seed_api_off(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    admin_key: str,
    base: str,
) -> None:
    on = await aiohttp_server(create_app(replace(settings, base_path=base)))
    off = await aiohttp_server(create_app(replace(settings, base_path=base, seed_api="off")))
    headers = {"Authorization": f"Bearer {admin_key}"}
    on_client: Client = await aiohttp_client(on, headers=headers)
    off_client: Client = await aiohttp_client(off, headers=headers)
    created = await on_client.post(base + "/keys", json={"name": "n"})
    assert created.status == 201
    for method, path in ROUTES:
        resp = await off_client.request(method, base + path, json={"name": "m"})
        assert resp.status == 404, path
        assert "no such route" in (await resp.json())["error"]
        if base != "/api":
            assert (await on_client.request(method, "/api" + path)).status == 404
    assert (await on_client.get(base + "/models")).status == 200
    for client in (on_client, off_client):
        root = await client.get(base.removesuffix("/api") or "/")
        assert await root.text() == "Ollama is running"
        assert (await client.get(base + "/tags")).status == 200
        assert (await client.post(base + "/show", json={"model": "llama2"})).status == 200


def test_openapi_lists_the_routes_only_when_on() -> None:
    for base in ("/api", "/ollama/api"):
        document = openapi_document(Settings(base_path=base))
        for method, path in ROUTES:
            listed = base + path.replace("/1", "/{id}")
            assert method.lower() in document["paths"][listed], listed
            assert document["paths"][listed][method.lower()]["tags"] == ["Compatible"]
        off = openapi_document(Settings(base_path=base, seed_api="off"))
        assert base + "/keys" not in off["paths"] and base + "/admin/stats" not in off["paths"]


def test_no_route_of_ollamas_is_shadowed(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings())
    handlers = {
        (r.method, r.resource.canonical): r.handler
        for r in app.router.routes()
        if r.resource is not None
    }
    ours = {handler for _method, _path, handler in compat.COMPAT_ROUTES}
    for route in RELAY_ROUTES:
        for method in route.methods:
            if route.native:
                assert handlers[(method, "/api" + route.path)] not in ours
    assert handlers[("GET", "/")] is root
    for method, path, handler in compat.COMPAT_ROUTES:
        assert handlers[(method, "/api" + path)] is handler

    async def tags(request: web.Request) -> web.Response:
        raise AssertionError

    monkeypatch.setattr(compat, "COMPAT_ROUTES", (("GET", "/tags", tags),))
    with pytest.raises(RuntimeError, match="is Ollama's"):
        create_app(Settings())
