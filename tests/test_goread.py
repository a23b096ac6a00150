"""A key held to some models cannot reach others by spelling: every body naming a model
is read as Ollama's Go decoder reads it (the fake decodes the Go way, see go_json.py),
cloud models stay off unless allowed, and an empty allow-list allows nothing."""

from __future__ import annotations

from dataclasses import replace

import aiosqlite
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.allowlist import is_cloud, model_allowed
from aigateway.db.store import Store
from aigateway.http.appkeys import KEY_TABLE
from aigateway.records import InvalidInputError
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key
from .helpers import eventually
from .test_policy import _usage, secret_known

ALLOWED = "llama3.2"
OTHER = "qwen3"


def _spellings(field: str, extra: str) -> list[bytes]:
    """Bodies that name ALLOWED where a dict-reader looks and OTHER where Go decodes."""
    f = field
    up = f.upper()
    cap = f[0].upper() + f[1:]
    escaped = "".join(f"\\u{ord(c):04x}" if i == 1 else c for i, c in enumerate(f))
    folded = f.replace("s", "\u017f").replace("k", "\u212a").replace("i", "\u0131")
    bodies = [
        f'{{"{f}":"{ALLOWED}","{cap}":"{OTHER}"{extra}}}',
        f'{{"{f}":"{ALLOWED}","{up}":"{OTHER}"{extra}}}',
        f'{{"{up}":"x","{f}":"{ALLOWED}","{cap}":"{OTHER}"{extra}}}',
        f'{{"{f}":"{OTHER}","{cap}":"y","{f}":"{ALLOWED}","{up}":"{OTHER}"{extra}}}',
        f'{{"{f}":"{ALLOWED}","{escaped}":"{OTHER}"{extra}}}',
        f'{{"{f}":"{OTHER}","{f}":null{extra}}}',
        f'{{"{f}":"{OTHER}","{cap}":null,"{up}":null{extra}}}',
        f'{{"{f}":"{ALLOWED}","{f}":5{extra}}}',
        f'{{"{f}":"{ALLOWED}"{extra}}} {{"{f}":"{OTHER}"}}',
    ]
    if folded != f:
        bodies.append(f'{{"{f}":"{ALLOWED}","{folded}":"{OTHER}"{extra}}}')
    return [b.encode() for b in bodies]


# (path, field, the rest of a body that makes sense for the route)
TARGETS = [
    ("/api/generate", "model", ',"prompt":"hi","stream":false'),
    ("/api/chat", "model", ',"messages":[],"stream":false'),
    ("/api/embed", "model", ',"input":"a"'),
    ("/api/embeddings", "model", ',"prompt":"a"'),
    ("/api/show", "model", ""),
    ("/api/show", "name", ""),
    ("/api/pull", "model", ',"stream":false'),
    ("/api/pull", "name", ',"stream":false'),
    ("/api/create", "from", ',"model":"llama3-mine"'),
    ("/api/copy", "source", ',"destination":"llama3-copy"'),
    ("/api/copy", "destination", ',"source":"llama3.2"'),
    ("/v1/chat/completions", "model", ',"messages":[]'),
    ("/v1/completions", "model", ',"prompt":"hi"'),
    ("/v1/embeddings", "model", ',"input":"a"'),
    ("/v1/responses", "model", ',"input":"hi"'),
    ("/v1/messages", "model", ',"max_tokens":5,"messages":[]'),
]


@pytest.fixture
async def held(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str
) -> TestClient[Request, None]:
    """An admin key (so model management is in reach) held to llama3*."""
    secret = await make_key(db_path, "hal", "held", role="admin", models=["llama3*"])
    await eventually(lambda: secret_known(gateway, secret))
    client: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {secret}"}
    )
    return client


@pytest.mark.parametrize(("path", "field", "extra"), TARGETS)
async def test_no_spelling_reaches_another_model(
    held: TestClient[Request, None], fake: FakeOllama, path: str, field: str, extra: str
) -> None:
    """Before: 8 of 9 spellings per field (10 where the name has s, k or i) reached
    Ollama naming qwen3. Now a body either reaches the fake and Go decodes an allowed
    model from it, or is refused before it leaves the gateway."""
    for body in _spellings(field, extra):
        fake.requests.clear()
        resp = await held.post(path, data=body)
        for relayed in fake.requests:
            assert relayed.decoded is not None
            for name in ("model", "name", "source", "destination", "from"):
                value = relayed.decoded.get(name)
                if value:
                    assert model_allowed(str(value), ("llama3*",)), (body, relayed.decoded)
        if not fake.requests:
            assert resp.status in (400, 403), (body, resp.status)


async def test_the_record_names_the_model_ollama_used(
    client: TestClient[Request, None], fake: FakeOllama, db_path: str
) -> None:
    body = b'{"model":"llama3.2","Model":"qwen3","stream":false,"messages":[]}'
    resp = await client.post("/api/chat", data=body)
    assert resp.status == 200
    assert fake.requests[-1].model == "qwen3"
    (record,) = await _usage(db_path, 1)
    assert (record.model, record.model_sent) == ("qwen3:latest", "qwen3")


# --- cloud models ---------------------------------------------------------------------------


# (A digest is no part of a name to Ollama any more: `x/y:1b-cloud@sha256:ab` is refused
# as an invalid name, 400, before the cloud check.)
CLOUD = ["gpt-oss:120b-cloud", "glm-4.6:cloud", "GPT-OSS:120B-CLOUD", " x/y:1B-Cloud "]


@pytest.mark.parametrize("model", CLOUD)
async def test_cloud_models_are_refused_by_default(
    client: TestClient[Request, None], fake: FakeOllama, model: str
) -> None:
    for path, extra in (("/api/chat", ',"messages":[]'), ("/v1/chat/completions", "")):
        resp = await client.post(path, data=f'{{"model":"{model}"{extra}}}'.encode())
        assert resp.status == 403
        assert "cloud" in str(await resp.json())
    resp = await client.get(f"/v1/models/{model.strip()}")
    assert resp.status == 404
    assert not fake.requests


async def test_an_undecidable_body_is_refused_while_cloud_models_are_off(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    """Go reads the first value and ignores the rest; the gateway cannot, so it refuses."""
    resp = await client.post("/api/chat", data=b'{"model":"gpt-oss:20b-cloud"} {}')
    assert resp.status == 400
    assert not fake.requests


async def test_cloud_models_when_allowed_need_a_pattern_naming_the_cloud_tag(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    db_path: str,
    fake: FakeOllama,
) -> None:
    server = await aiohttp_server(create_app(replace(settings, allow_cloud_models=True)))
    keys = {
        "all": await make_key(db_path, "a", "all"),
        "star": await make_key(db_path, "a", "star", models=["*"]),
        "gpt": await make_key(db_path, "a", "gpt", models=["gpt-oss*"]),
        "cloud": await make_key(db_path, "a", "cloud", models=["*-cloud"]),
    }
    await eventually(lambda: all(secret_known(server, k) for k in keys.values()))
    statuses = {}
    for name, secret in keys.items():
        client: TestClient[Request, None] = await aiohttp_client(
            server, headers={"Authorization": f"Bearer {secret}"}
        )
        resp = await client.post(
            "/api/chat", data=b'{"model":"gpt-oss:120b-cloud","messages":[],"stream":false}'
        )
        statuses[name] = resp.status
    assert statuses == {"all": 200, "star": 403, "gpt": 403, "cloud": 200}


def test_what_counts_as_cloud() -> None:
    for name in CLOUD:
        assert is_cloud(name)
    for name in ("llama3.2", "soundcloud-llm", "cloud", "my-cloudy:7b", "cloud:latest"):
        assert not is_cloud(name), name


async def test_model_lists_leave_out_cloud_models(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    fake.extra_models = ["gpt-oss:120b-cloud"]
    tags = await (await client.get("/api/tags")).json()
    names = [m["name"] for m in tags["models"]]
    assert names and not any(is_cloud(n) for n in names)
    models = await (await client.get("/v1/models")).json()
    assert models["data"] and not any(is_cloud(m["id"]) for m in models["data"])


# --- empty allow-lists -------------------------------------------------------------------------


@pytest.mark.parametrize("models", [[], [""], ["  "], ["", " "]])
async def test_an_empty_allow_list_is_refused_not_read_as_every_model(
    db_path: str, models: list[str]
) -> None:
    store = await Store.open(db_path)
    try:
        with pytest.raises(InvalidInputError, match="at least one"):
            await store.create_key("u", "k", models=models)
    finally:
        await store.close()


async def test_an_empty_list_stored_by_an_older_version_allows_nothing(
    aiohttp_client: AiohttpClient, gateway: TestServer, db_path: str, fake: FakeOllama
) -> None:
    secret = await make_key(db_path, "old", "empty", models=["llama3*"])

    async with aiosqlite.connect(db_path) as db:
        await db.execute("UPDATE keys SET models = '[]' WHERE name = 'empty'")
        await db.commit()
    table = gateway.app[KEY_TABLE]
    await eventually(
        lambda: secret_known(gateway, secret) and table.authenticate(secret).models == ()
    )
    client: TestClient[Request, None] = await aiohttp_client(
        gateway, headers={"Authorization": f"Bearer {secret}"}
    )
    resp = await client.post("/api/chat", data=b'{"model":"llama3.2","messages":[]}')
    assert resp.status == 403
    assert not fake.requests
