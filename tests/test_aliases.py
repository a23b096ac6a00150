"""Model aliases (issue 29): stored on both databases, resolved once at admission for the
key, its user or everyone (the narrowest wins), the body sent naming the target, model
lists showing them, and the official SDKs asking for their own model names."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request
from playwright.async_api import Browser, expect
from pytest_aiohttp import AiohttpClient, AiohttpServer
from sqlalchemy.ext.asyncio import create_async_engine

from aigateway import Settings, create_app
from aigateway.access.aliases import AliasTable, with_aliases
from aigateway.access.keytable import bootstrap_record
from aigateway.db.store import Store
from aigateway.db.url import database_from
from aigateway.protocol.body import with_model
from aigateway.protocol.names import ModelRef, resolve
from aigateway.records import Alias, InvalidInputError, KeyNotFoundError, ModelInfo
from aigateway.testing import go_json
from aigateway.testing.fake_ollama import FakeOllama, fixture
from aigateway.upstreams.union import go_escaped

from .browser import chromium, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key
from .helpers import at_revision, eventually, old_key
from .test_cli_flags import keys_in, run
from .test_cli_menu import BACKSPACE, DOWN, ENTER, TO_EXIT, TO_PRICES, menu
from .test_instances import cli
from .test_policy import _usage, secret_known
from .test_server_process import start_gateways
from .test_upstreams import Three, _models

GatewayClient = TestClient[Request, None]


# --- the store, on both databases ------------------------------------------------------


async def test_aliases_are_stored_matched_without_case_and_removed(database: str) -> None:
    store = await Store.open(database)
    try:
        _, _ = await store.create_key("alice", "laptop", "user", None)
        (key,) = await store.list_keys()
        made = await store.set_alias(" GPT-4o-mini ", "Llama3.2")
        assert (made.name, made.canonical, made.target) == (
            "GPT-4o-mini",
            "gpt-4o-mini:latest",
            "llama3.2:latest",
        )
        await store.set_alias("gpt-4o-mini", "qwen3:8b", "user", "alice")
        await store.set_alias("gpt-4o-mini", "deepseek-r1", "key", str(key.id))
        # The same name spelled another way is the same alias: its target changes.
        again = await store.set_alias("gpt-4o-mini:LATEST", "llama3.2:1b")
        assert (again.name, again.target) == ("gpt-4o-mini:LATEST", "llama3.2:1b")
        listed = await store.list_aliases()
        assert [(a.scope, a.owner, a.target) for a in listed] == [
            ("global", "", "llama3.2:1b"),
            ("key", str(key.id), "deepseek-r1:latest"),
            ("user", "alice", "qwen3:8b"),
        ]
        gone = await store.remove_alias("GPT-4O-MINI", "user", "alice")
        assert gone.target == "qwen3:8b"
        with pytest.raises(KeyNotFoundError, match="no alias 'gpt-4o-mini' of user alice"):
            await store.remove_alias("gpt-4o-mini", "user", "alice")
        assert len(await store.list_aliases()) == 2
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("name", "target", "scope", "owner", "error"),
    [
        ("", "llama3.2", "global", "", "not a model name"),
        ("a" * 81, "llama3.2", "global", "", "not a model name"),
        ("gpt 4o", "llama3.2", "global", "", "not a model name"),
        ("gpt-4o\u00e9", "llama3.2", "global", "", "not a model name"),
        ("https://x/y/gpt", "llama3.2", "global", "", "without a scheme"),
        ("gpt-4o:local", "llama3.2", "global", "", "not a cloud model nor :local"),
        ("gpt-oss:20b-cloud", "llama3.2", "global", "", "not a cloud model nor :local"),
        ("gpt-4o", "bad name", "global", "", "not a model name"),
        ("gpt-4o", "GPT-4o:latest", "global", "", "cannot point to itself"),
        ("gpt-4o", "llama3.2", "team", "", "scope must be one of"),
        ("gpt-4o", "llama3.2", "global", "alice", "names no user or key"),
        ("gpt-4o", "llama3.2", "user", "", "name the user"),
        ("gpt-4o", "llama3.2", "key", "x1", "by its id"),
        ("gpt-4o", "llama3.2", "key", "9" * 30, "by its id"),
    ],
)
async def test_hostile_aliases_are_refused(
    db_path: str, name: str, target: str, scope: str, owner: str, error: str
) -> None:
    store = await Store.open(db_path)
    try:
        with pytest.raises(InvalidInputError, match=error):
            await store.set_alias(name, target, scope, owner)
        assert await store.list_aliases() == []
    finally:
        await store.close()


async def test_an_alias_may_not_point_to_an_alias_nor_hide_a_model(database: str) -> None:
    store = await Store.open(database)
    try:
        await store.create_user("bob")
        await store.set_alias("gpt-4o-mini", "llama3.2", "user", "bob")
        with pytest.raises(InvalidInputError, match="'gpt-4o-mini' is an alias"):
            await store.set_alias("gpt-4", "GPT-4o-mini")  # another scope: still refused
        with pytest.raises(InvalidInputError, match="the alias 'gpt-4o-mini' points to"):
            await store.set_alias("llama3.2:latest", "qwen3")
        await store.replace_models([ModelInfo("qwen3:8b")])
        with pytest.raises(InvalidInputError, match="a model the upstreams serve"):
            await store.set_alias("Qwen3:8B", "llama3.2")
        with pytest.raises(KeyNotFoundError, match="no user 'carol'"):
            await store.set_alias("gpt-4", "llama3.2", "user", "carol")
        with pytest.raises(KeyNotFoundError, match="no key with id 42"):
            await store.set_alias("gpt-4", "llama3.2", "key", "42")
        record, _ = await store.create_key("bob", "old", "user", None)
        await store.revoke_key("bob", "old")
        with pytest.raises(InvalidInputError, match="is revoked"):
            await store.set_alias("gpt-4", "llama3.2", "key", str(record.id))
        assert len(await store.list_aliases()) == 1
    finally:
        await store.close()


# --- resolution and the body ---------------------------------------------------------------


def test_the_narrowest_alias_wins() -> None:
    alice = replace(bootstrap_record("x" * 10), id=7, user="alice")
    table = AliasTable(
        [
            Alias("gpt-4o-mini", "gpt-4o-mini:latest", "llama3.2:latest"),
            Alias("gpt-4o-mini", "gpt-4o-mini:latest", "qwen3:8b", "user", alice.user),
            Alias("gpt-4o", "gpt-4o:latest", "gpt-oss:20b-cloud", "key", "7"),
        ]
    )
    ref = resolve("GPT-4o-Mini:latest")
    assert table.apply(ref, alice) == ModelRef(
        "GPT-4o-Mini:latest", "qwen3:8b", False, "gpt-4o-mini:latest"
    )
    other = replace(alice, id=8, user="bob")
    assert table.apply(ref, other).canonical == "llama3.2:latest"
    assert table.apply(resolve("gpt-4o"), alice) == ModelRef(
        "gpt-4o", "gpt-oss:20b-cloud", True, "gpt-4o:latest"
    )
    assert table.apply(resolve("gpt-4o"), other) == resolve("gpt-4o")
    assert [a.target for a in table.for_caller(alice)] == ["qwen3:8b", "gpt-oss:20b-cloud"]
    assert AliasTable().empty and not table.empty


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model":"gpt-4o-mini","messages":[]}', b'{"model":"llama3.2:latest","messages":[]}'),
        (  # spaces, key order and every other byte as sent; nested "model" untouched
            b'{ "messages" : [{"model":"gpt-4o-mini"}] ,\n "Model":\t"gpt-4o-mini" }',
            b'{ "messages" : [{"model":"gpt-4o-mini"}] ,\n "Model":\t"llama3.2:latest" }',
        ),
        (  # Go reads the last: the one that matched is the one rewritten
            b'{"model":"qwen3","MODEL":"gpt-4o-mini","x":"\xff"}',
            b'{"model":"qwen3","MODEL":"llama3.2:latest","x":"\xff"}',
        ),
        (  # an escaped key is the same key to Go
            b'{"mod\\u0065l":"gpt-4o-mini","name":"gpt-4o-mini"}',
            b'{"mod\\u0065l":"llama3.2:latest","name":"llama3.2:latest"}',
        ),
    ],
)
def test_the_body_names_the_target_and_nothing_else_changes(body: bytes, expected: bytes) -> None:
    out = with_model(body, ("model", "name"), "gpt-4o-mini", "llama3.2:latest")
    assert out == expected
    assert go_json.decode(out)["model"] == "llama3.2:latest"


# --- model lists --------------------------------------------------------------------------

_MINI = Alias("gpt-4o-mini", "gpt-4o-mini:latest", "llama3.2:latest")


def test_lists_show_an_alias_beside_its_target_in_go_bytes() -> None:
    tags = fixture("tags.json")
    out = with_aliases(tags, [_MINI])
    doc = orjson.loads(out)
    names = [m["name"] for m in doc["models"]]
    at = names.index("llama3.2:latest")
    assert names[at + 1] == "gpt-4o-mini"
    entry, target = doc["models"][at + 1], doc["models"][at]
    assert entry == {**target, "name": "gpt-4o-mini", "model": "gpt-4o-mini"}
    assert out == go_escaped(orjson.dumps(doc))  # as Go's encoding/json writes it
    models = fixture("openai-models.json")
    out = with_aliases(models, [_MINI])
    assert [d["id"] for d in orjson.loads(out)["data"]][:2] == ["llama3.2:latest", "gpt-4o-mini"]
    assert out == go_escaped(orjson.dumps(orjson.loads(out)))
    # A target the list lacks shows no alias; the same bytes object when nothing applies.
    lost = Alias("gpt-4", "gpt-4:latest", "mistral:latest")
    assert with_aliases(tags, [lost]) is tags and with_aliases(tags, []) is tags
    # A model the alias's name hides goes from the list (the alias wins).
    hiding = Alias("deepseek-r1", "deepseek-r1:latest", "llama3.2:latest")
    hidden = [m["name"] for m in orjson.loads(with_aliases(tags, [hiding]))["models"]]
    assert "deepseek-r1:latest" not in hidden and "deepseek-r1" in hidden


# --- through the gateway -----------------------------------------------------------------


def _ran(fake: FakeOllama) -> object:
    """The model the upstream was asked to run last."""
    return fake.requests[-1].model


async def _set(db_path: str, *args: str) -> Alias:
    store = await Store.open(db_path)
    try:
        return await store.set_alias(*args)
    finally:
        await store.close()


@pytest.fixture
async def mini(db_path: str, key: str) -> Alias:
    """gpt-4o-mini -> llama3.2 for everyone, set before the gateway starts."""
    return await _set(db_path, "gpt-4o-mini", "llama3.2")


async def test_the_upstream_runs_the_target_and_the_record_keeps_both(
    mini: Alias, client: GatewayClient, fake: FakeOllama, db_path: str
) -> None:
    body = b'{"model":"GPT-4o-mini","stream":false,\n"messages":[{"role":"user","content":"hi"}]}'
    resp = await client.post("/api/chat", data=body)
    assert resp.status == 200
    assert (await resp.json())["model"] == "llama3.2"  # the answer names the model served
    sent = fake.requests[-1].body
    assert sent == body.replace(b"GPT-4o-mini", b"llama3.2:latest")
    (record,) = await _usage(db_path, 1)
    assert (record.model, record.model_sent) == ("llama3.2:latest", "GPT-4o-mini")
    # No alias named: the body goes on byte for byte.
    plain = b'{"model":"qwen3" ,"stream":false,"messages":[]}'
    assert (await client.post("/api/chat", data=plain)).status == 200
    assert fake.requests[-1].body == plain
    # Model management never takes an alias (it would delete the target).
    admin_key = await make_key(db_path, "root2", "ops", "admin")
    deleted = await client.delete(
        "/api/delete",
        data=b'{"model":"gpt-4o-mini"}',
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert deleted.status == 200
    assert fake.requests[-1].decoded == {"model": "gpt-4o-mini"}


async def test_allow_lists_see_the_target_and_lists_show_what_a_key_may_use(
    mini: Alias,
    gateway: TestServer,
    aiohttp_client: AiohttpClient,
    client: GatewayClient,
    fake: FakeOllama,
    db_path: str,
) -> None:
    llama = await make_key(db_path, "lena", "llama", models=["llama3*"])
    qwen = await make_key(db_path, "quinn", "qwen", models=["qwen*"])
    await eventually(lambda: secret_known(gateway, llama) and secret_known(gateway, qwen))
    for secret, status in ((llama, 200), (qwen, 403)):
        held: GatewayClient = await aiohttp_client(
            gateway, headers={"Authorization": f"Bearer {secret}"}
        )
        chat = {"model": "gpt-4o-mini", "messages": [], "stream": False}
        assert (await held.post("/v1/chat/completions", json=chat)).status == status
        tags = await (await held.get("/api/tags")).json()
        listed = "gpt-4o-mini" in [m["name"] for m in tags["models"]]
        models = await (await held.get("/v1/models")).json()
        assert listed == (status == 200) == ("gpt-4o-mini" in [d["id"] for d in models["data"]])
    everything = await (await client.get("/api/tags")).read()
    assert everything == with_aliases(fixture("tags.json"), [mini])
    ps = await (await client.get("/api/ps")).read()
    assert ps == fixture("ps.json")  # an alias is never loaded as itself


async def test_an_alias_set_elsewhere_works_within_a_second_and_the_narrowest_wins(
    gateway: TestServer, client: GatewayClient, fake: FakeOllama, db_path: str
) -> None:
    store = await Store.open(db_path)
    try:
        await store.set_alias("gpt-4o-mini", "llama3.2")
        await store.set_alias("gpt-4o-mini", "qwen3:8b", "user", "alice")
        (key,) = [k for k in await store.list_keys() if k.user == "alice"]
    finally:
        await store.close()

    async def runs() -> object:
        body = {"model": "gpt-4o-mini", "prompt": "hi", "stream": False}
        assert (await client.post("/api/generate", json=body)).status == 200
        return _ran(fake)

    async def becomes(model: str) -> None:
        for _ in range(40):
            if await runs() == model:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never ran {model}")

    await becomes("qwen3:8b")  # alice's own alias over the global one
    await _set(db_path, "gpt-4o-mini", "deepseek-r1", "key", str(key.id))
    await becomes("deepseek-r1:latest")
    store = await Store.open(db_path)
    try:
        await store.remove_alias("gpt-4o-mini", "key", str(key.id))
        await store.remove_alias("gpt-4o-mini", "user", "alice")
    finally:
        await store.close()
    await becomes("llama3.2:latest")


# --- the official SDKs asking for their own model names -----------------------------------


@pytest.fixture
async def sdk_aliases(db_path: str, key: str) -> None:
    await _set(db_path, "gpt-4o-mini", "llama3.2")
    await _set(db_path, "claude-3-5-haiku-latest", "qwen3-coder")


async def test_openai_sdk_asks_for_gpt_4o_mini(
    sdk_aliases: None, gateway: TestServer, key: str, fake: FakeOllama, db_path: str
) -> None:
    client = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)
    try:
        chat = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content
        assert _ran(fake) == "llama3.2:latest"
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello!"
        ids = [m.id async for m in client.models.list()]
        assert "gpt-4o-mini" in ids and "llama3.2:latest" in ids
    finally:
        await client.close()
    records = await _usage(db_path, 2)
    assert {(r.model, r.model_sent) for r in records if r.model} == {
        ("llama3.2:latest", "gpt-4o-mini")
    }


async def test_anthropic_sdk_asks_for_a_claude_model(
    sdk_aliases: None, gateway: TestServer, key: str, fake: FakeOllama, db_path: str
) -> None:
    claude = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")).rstrip("/"), api_key=key, max_retries=0
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    try:
        message = await claude.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=10, messages=messages
        )
        assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
        assert _ran(fake) == "qwen3-coder:latest"
        async with claude.messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=10, messages=messages
        ) as stream:
            assert await stream.get_final_text() == "Hello!"
    finally:
        await claude.close()
    records = await _usage(db_path, 2)
    assert {(r.model, r.model_sent) for r in records} == {
        ("qwen3-coder:latest", "claude-3-5-haiku-latest")
    }


# --- the admin API ------------------------------------------------------------------------


async def test_the_admin_api_sets_lists_and_removes_aliases(
    admin: GatewayClient, client: GatewayClient, fake: FakeOllama, db_path: str
) -> None:
    made = await admin.post("/admin/aliases", json={"name": "gpt-4o-mini", "target": "llama3.2"})
    assert made.status == 200, await made.text()
    assert await made.json() == {
        "name": "gpt-4o-mini",
        "target": "llama3.2:latest",
        "scope": "global",
        "user": None,
        "key_id": None,
        "created_at": (await made.json())["created_at"],
    }
    # The admin API's own write is in force for the next request (no reload wait).
    chat = {"model": "gpt-4o-mini", "messages": [], "stream": False}
    assert (await client.post("/api/chat", json=chat)).status == 200
    assert _ran(fake) == "llama3.2:latest"
    mine = await admin.post(
        "/admin/aliases", json={"name": "gpt-4o-mini", "target": "qwen3:8b", "user": "alice"}
    )
    assert mine.status == 200 and (await mine.json())["scope"] == "user"
    assert (await client.post("/api/chat", json=chat)).status == 200
    assert _ran(fake) == "qwen3:8b"
    listed = (await (await admin.get("/admin/aliases")).json())["aliases"]
    assert [(a["scope"], a["user"], a["target"]) for a in listed] == [
        ("global", None, "llama3.2:latest"),
        ("user", "alice", "qwen3:8b"),
    ]
    # A key sees its own aliases of the models it may use on its Models page.
    models = await (await client.get("/admin/models")).json()
    assert models["aliases"] == []  # (qwen3:8b is not in the fake's list)
    gone = await admin.delete("/admin/aliases?name=GPT-4o-mini&user=alice")
    assert gone.status == 200 and (await gone.json())["removed"]["target"] == "qwen3:8b"
    models = await (await client.get("/admin/models")).json()
    assert models["aliases"] == [{"name": "gpt-4o-mini", "target": "llama3.2:latest"}]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"[]", 400, "must be a JSON object"),
        (b'{"name":"gpt-4o"}', 400, "missing field(s): target"),
        (b'{"name":"gpt-4o","target":"llama3.2","x":1}', 400, "unknown field(s): x"),
        (b'{"name":7,"target":"llama3.2"}', 400, "name must be a string"),
        (b'{"name":null,"target":"llama3.2"}', 400, "must be model names"),
        (b'{"name":"gpt-4o","target":"llama3.2","key_id":true}', 400, "key_id must be"),
        (b'{"name":"gpt-4o","target":"llama3.2","key_id":-1}', 400, "key_id must be"),
        (b'{"name":"gpt-4o","target":"llama3.2","key_id":1,"user":"alice"}', 400, "not both"),
        (b'{"name":"gpt-4o","target":"llama3.2","user":"nobody"}', 404, "no user"),
        (b'{"name":"' + b"x" * 5000 + b'","target":"llama3.2"}', 400, "not a model name"),
        (b'{"name":"<b>x</b>","target":"llama3.2"}', 400, "not a model name"),
    ],
)
async def test_the_admin_api_refuses_bad_aliases_in_json(
    admin: GatewayClient, body: bytes, status: int, error: str
) -> None:
    resp = await admin.post("/admin/aliases", data=body)
    assert resp.status == status
    assert error in (await resp.json())["error"]
    assert (await (await admin.get("/admin/aliases")).json())["aliases"] == []


async def test_only_admins_manage_aliases(client: GatewayClient, admin: GatewayClient) -> None:
    assert (await client.get("/admin/aliases")).status == 403
    made = await client.post("/admin/aliases", json={"name": "a", "target": "llama3.2"})
    assert made.status == 403
    assert (await client.delete("/admin/aliases?name=a")).status == 403
    assert (await admin.delete("/admin/aliases")).status == 400
    assert (await admin.delete("/admin/aliases?name=a&key_id=x")).status == 400
    missing = await admin.delete("/admin/aliases?name=a")
    assert missing.status == 404 and "no alias 'a'" in (await missing.json())["error"]


# --- the CLIs ------------------------------------------------------------------------------


def test_the_flags_cli_sets_lists_and_removes_aliases(db_path: str) -> None:
    assert run("-g", "alice", "laptop", "--db", db_path)[0] == 0
    (key,) = keys_in(db_path)
    code, out, err = run("--set-alias", "gpt-4o-mini", "llama3.2", "--db", db_path)
    assert code == 0 and "gpt-4o-mini" in out and "llama3.2:latest" in out
    assert "run llama3.2:latest on every gateway within a second" in err
    assert run("--set-alias", "gpt-4o", "qwen3", "--user", "alice", "--db", db_path)[0] == 0
    assert run("--set-alias", "o1", "deepseek-r1", "--key-id", str(key.id), "--db", db_path)[0] == 0
    code, out, _ = run("--aliases", "--format", "json", "--db", db_path)
    assert code == 0
    assert [(a["name"], a["scope"], a["owner"]) for a in json.loads(out)] == [
        ("gpt-4o-mini", "global", None),
        ("o1", "key", str(key.id)),
        ("gpt-4o", "user", "alice"),
    ]
    # Mistakes: one line, nothing changed.
    code, _, err = run("--set-alias", "gpt-4", "GPT-4o", "--db", db_path)
    assert (
        code == 1
        and err.strip()
        == "Error: 'gpt-4o' is an alias; an alias may not point to an alias (name its model)"
    )
    code, _, err = run("--set-alias", "x", "y", "--user", "a", "--key-id", "1", "--db", db_path)
    assert code == 1 and "not both" in err
    code, _, err = run("--aliases", "--key-id", "1", "--db", db_path)
    assert code == 1 and "--key-id goes with --set-alias or --remove-alias" in err
    code, _, err = run("--remove-alias", "gpt-4o", "--db", db_path)
    assert code == 1 and err.strip() == "Error: no alias 'gpt-4o'"
    code, _, err = run("--remove-alias", "GPT-4O", "--user", "alice", "--db", db_path)
    assert code == 0 and "Removed the alias gpt-4o (it ran qwen3:latest)" in err
    assert len(json.loads(run("--aliases", "--format", "json", "--db", db_path)[1])) == 2


def test_the_menu_sets_lists_and_removes_aliases(db_path: str) -> None:
    assert run("-g", "alice", "laptop", "--db", db_path)[0] == 0
    to_aliases = [*TO_PRICES, ENTER, *[DOWN] * 5]
    with menu(db_path) as session:
        # Set for everyone; a bad name is refused as typed, then fixed.
        session.type(*to_aliases, DOWN, ENTER, "gpt 4o", ENTER)
        session.type(*[BACKSPACE] * 6, "gpt-4o-mini", ENTER, "llama3.2", ENTER, ENTER)
        # For one user's keys (alice), then for one key (alice/laptop).
        session.type(*to_aliases, DOWN, ENTER, "gpt-4o", ENTER, "qwen3", ENTER, DOWN, ENTER)
        session.type(ENTER)
        session.type(*to_aliases, DOWN, ENTER, "o1", ENTER, "deepseek-r1", ENTER)
        session.type(DOWN, DOWN, ENTER, ENTER)
        session.type(*to_aliases, ENTER)  # list
        session.type(*to_aliases, DOWN, DOWN, ENTER, ENTER)  # remove the first listed
        session.type(*TO_EXIT)
    said = session.output()
    assert "deepseek-r1:latest" in said and "Removed the alias gpt-4o-mini." in said
    listed = json.loads(run("--aliases", "--format", "json", "--db", db_path)[1])
    (key,) = keys_in(db_path)
    assert [(a["name"], a["target"], a["scope"], a["owner"]) for a in listed] == [
        ("o1", "deepseek-r1:latest", "key", str(key.id)),
        ("gpt-4o", "qwen3:latest", "user", "alice"),
    ]


# --- the dashboard ---------------------------------------------------------------------------


async def test_the_models_page_adds_shows_and_removes_aliases(
    browser: Browser, gateway: TestServer, db_path: str, admin_key: str, key: str
) -> None:
    url = str(gateway.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, admin_key)
    try:
        await page.goto(url + "/ui/#/models")
        await page.wait_for_selector("#view-models[aria-busy=false]")
        form = page.locator("#alias-form")
        # A name Ollama would refuse: the API's words under the field, nothing stored.
        await form.locator("#alias-form-name").fill("gpt 4o")
        await form.locator("#alias-form-target").fill("llama3.2")
        await form.locator("button[type=submit]").click()
        await expect(form.locator("#alias-form-name-error")).to_contain_text(
            "not a model name Ollama would take"
        )
        # A target that is itself an alias: said under the target.
        await _set(db_path, "claude-3-5-haiku-latest", "qwen3")
        await form.locator("#alias-form-name").fill("gpt-4o-mini")
        await form.locator("#alias-form-target").fill("Claude-3-5-Haiku-Latest")
        await form.locator("button[type=submit]").click()
        await expect(form.locator("#alias-form-target-error")).to_contain_text("is an alias")
        await form.locator("#alias-form-target").fill("llama3.2")
        await form.locator("#alias-form-user").fill("alice")
        await form.locator("button[type=submit]").click()
        rows = page.locator("#view-models h2#aliases ~ .table-wrap tbody tr")
        await expect(rows).to_have_count(2)
        mine = rows.filter(has_text="gpt-4o-mini")
        await expect(mine.locator("td").nth(1)).to_have_text("llama3.2:latest")
        await expect(mine.locator("td").nth(2)).to_have_text("user alice")
        await shot(page, "aliases")
        # What the API holds after the form was saved.
        held = await _admin_get(url, admin_key, "/admin/aliases")
        assert [(a["name"], a["target"], a["user"]) for a in held["aliases"]] == [
            ("claude-3-5-haiku-latest", "qwen3:latest", None),
            ("gpt-4o-mini", "llama3.2:latest", "alice"),
        ]
        # Remove asks inline first.
        await mine.locator("button[data-action=remove-alias]").click()
        await mine.locator("button[data-action=confirm]").click()
        await expect(rows).to_have_count(1)
        held = await _admin_get(url, admin_key, "/admin/aliases")
        assert [a["name"] for a in held["aliases"]] == ["claude-3-5-haiku-latest"]
    finally:
        await context.close()
    # A user's key sees its own aliases of the models it may use, nothing to change.
    await _set(db_path, "gpt-4o-mini", "llama3.2", "user", "alice")
    context, page = await signed_in(browser, url, key)
    try:
        await page.goto(url + "/ui/#/models")
        await page.wait_for_selector("#view-models[aria-busy=false]")
        rows = page.locator("#view-models h2#aliases ~ .table-wrap tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.locator("td").nth(0)).to_have_text("gpt-4o-mini")
        await expect(page.locator("#alias-form")).to_have_count(0)
        await shot(page, "aliases-user")
    finally:
        await context.close()


async def _admin_get(url: str, key: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        assert resp.status == 200
        return await resp.json()


# --- several upstreams, show, and the upgrade ----------------------------------------------


async def test_with_several_upstreams_the_target_picks_the_upstream_and_the_union_lists_it(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str, key: str
) -> None:
    three = Three()
    urls = [str((await aiohttp_server(f.app())).make_url("")).rstrip("/") for f in three.fakes]
    settings = Settings(ollama_base_url=",".join(urls), token_db_path=db_path)
    user: TestClient[Request, Application] = await aiohttp_client(
        create_app(settings), headers={"Authorization": f"Bearer {key}"}
    )
    admin_key = await make_key(db_path, "root", "ops", "admin")
    admin: GatewayClient = await aiohttp_client(
        user.server, headers={"Authorization": f"Bearer {admin_key}"}
    )
    made = await admin.post("/admin/aliases", json={"name": "gpt-4o-mini", "target": "phi4"})
    assert made.status == 200
    three.forget()
    chat = {"model": "gpt-4o-mini", "messages": [], "stream": False}
    assert (await user.post("/api/chat", json=chat)).status == 200
    assert _models(three.c) == ["phi4:latest"] and _models(three.a) == _models(three.b) == []
    names = [m["name"] for m in (await (await user.get("/api/tags")).json())["models"]]
    assert names[names.index("phi4:latest") + 1] == "gpt-4o-mini"
    ids = [m["id"] for m in (await (await user.get("/v1/models")).json())["data"]]
    assert ids[ids.index("phi4:latest") + 1] == "gpt-4o-mini"


async def test_show_takes_an_alias(mini: Alias, client: GatewayClient, fake: FakeOllama) -> None:
    resp = await client.post("/api/show", json={"model": "GPT-4o-mini"})
    assert resp.status == 200
    assert fake.requests[-1].body == b'{"model": "llama3.2:latest"}'  # (aiohttp's spacing)


async def test_a_database_of_the_release_before_upgrades_in_place(database: str) -> None:
    """A database at revision 0021 with a key opens with the key as it was, and takes
    aliases."""
    engine = create_async_engine(database_from(database).url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(at_revision(21))
            await conn.run_sync(old_key)
    finally:
        await engine.dispose()
    store = await Store.open(database)
    try:
        assert (await store.get_key(1)).name == "old"
        await store.set_alias("gpt-4o-mini", "llama3.2", "key", "1")
        assert [(a.scope, a.owner) for a in await store.list_aliases()] == [("key", "1")]
    finally:
        await store.close()


async def test_gateways_sharing_postgresql_take_an_alias_within_a_second(
    upstream: TestServer, fake: FakeOllama, pg_url: str, tmp_path: Path
) -> None:
    """Set by the CLI on one database, an alias is in force on every gateway within a
    second (the key table's change feed, LISTEN/NOTIFY), and gone again as fast."""
    gateways = await start_gateways(upstream, tmp_path, *[{"DATABASE_URL": pg_url}] * 2)
    try:
        key = cli("-g", "carol", "laptop", "--db", pg_url).stdout.strip()
        body = b'{"model":"gpt-4o-mini","stream":false,"messages":[]}'

        async def ran_everywhere(session: aiohttp.ClientSession) -> list[object]:
            models = []
            for gw in gateways:
                async with session.post(
                    gw.url + "/api/chat", data=body, headers={"Authorization": f"Bearer {key}"}
                ) as resp:
                    await resp.read()
                    models.append(_ran(fake) if resp.status == 200 else resp.status)
            return models

        async def within_a_second(expected: list[object]) -> None:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                while (found := await ran_everywhere(session)) != expected:
                    assert time.monotonic() - started < 1.0, found
                    await asyncio.sleep(0.05)

        made = cli("--set-alias", "gpt-4o-mini", "llama3.2", "--db", pg_url)
        assert made.returncode == 0, made.stderr
        await within_a_second(["llama3.2:latest"] * 2)
        assert cli("--remove-alias", "gpt-4o-mini", "--db", pg_url).returncode == 0
        await within_a_second(["gpt-4o-mini"] * 2)  # (the fake runs any name)
    finally:
        for gw in gateways:
            await gw.stop()
