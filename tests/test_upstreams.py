"""Several upstreams behind one address: three fake Ollama servers on loopback with
overlapping models, fake OpenAI and Anthropic APIs, and the gateway in front of them."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import cast

import orjson
import pytest
from aiohttp import web
from aiohttp.client import _RequestContextManager
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.limits import rate_limit_headers
from aigateway.errors import Refused
from aigateway.records import KeyLimits
from aigateway.relay.state import RELAY
from aigateway.settings import SettingsError
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import (
    ANTHROPIC_VERSION,
    UpstreamConfig,
    UpstreamsError,
    upstreams_from_file,
)
from aigateway.upstreams.http import request_headers, response_headers

from .conftest import make_key
from .helpers import eventually

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
# several: a user client (made from the app) and an admin client (made from its server)
Several = tuple[TestClient[web.Request, web.Application], TestClient[web.Request, None]]
# one_slot: the fake Ollama, a client, the greedy and the modest user's keys, an admin key
OneSlot = tuple[FakeOllama, TestClient[web.Request, web.Application], str, str, str]


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _models(fake: FakeOllama) -> list[object]:
    return [r.model for r in fake.requests if r.method == "POST"]


class Three:
    """Three fake Ollamas: a has llama3.2 and qwen3:8b, b llama3.2 and mistral (loaded),
    c mistral and phi4."""

    def __init__(self) -> None:
        self.a = FakeOllama(models=["llama3.2:latest", "qwen3:8b"], loaded=[])
        self.b = FakeOllama(models=["llama3.2:latest", "mistral:latest"], loaded=["mistral"])
        self.c = FakeOllama(models=["mistral:latest", "phi4:latest"], loaded=[])
        self.fakes = (self.a, self.b, self.c)
        self.servers: list[TestServer] = []

    def forget(self) -> None:
        for fake in self.fakes:
            fake.requests.clear()


@pytest.fixture
async def three(aiohttp_server: AiohttpServer) -> Three:
    found = Three()
    for fake in found.fakes:
        found.servers.append(await aiohttp_server(fake.app()))
    return found


@pytest.fixture
async def several(aiohttp_client: AiohttpClient, three: Three, db_path: str) -> Several:
    """A user client and an admin client of a gateway in front of the three."""
    settings = Settings(
        ollama_base_url=",".join(_url(s) for s in three.servers),
        token_db_path=db_path,
        upstream_check_interval=0.2,
    )
    user_key = await make_key(db_path)
    admin_key = await make_key(db_path, "root", "ops", "admin")
    app = create_app(settings)
    user = await aiohttp_client(app, headers={"Authorization": f"Bearer {user_key}"})
    admin: TestClient[web.Request, None] = await aiohttp_client(
        user.server, headers={"Authorization": f"Bearer {admin_key}"}
    )
    return user, admin


async def test_a_request_goes_to_an_upstream_that_has_its_model(
    several: Several, three: Three
) -> None:
    user, _ = several
    three.forget()
    for model, where in (("phi4", three.c), ("qwen3:8b", three.a), ("phi4:latest", three.c)):
        resp = await user.post("/api/chat", json={"model": model, **CHAT})
        assert resp.status == 200, await resp.text()
        assert [cast(str, m).lower() for m in _models(where)] == [model.lower()]
        three.forget()


async def test_a_loaded_copy_is_preferred_to_a_cold_one(several: Several, three: Three) -> None:
    user, _ = several
    three.forget()
    # llama3.2 is loaded nowhere: a and b take turns
    for _ in range(6):
        resp = await user.post("/api/chat", json={"model": "llama3.2", **CHAT})
        assert resp.status == 200
    assert len(_models(three.a)) == 3 and len(_models(three.b)) == 3
    three.forget()
    for _ in range(5):  # b has mistral loaded, c would have to load it
        resp = await user.post("/api/chat", json={"model": "mistral", **CHAT})
        assert resp.status == 200
    assert len(_models(three.b)) == 5 and not _models(three.c)


async def test_model_lists_are_the_union_each_model_once(
    several: Several, three: Three, db_path: str
) -> None:
    user, _ = several
    tags = await (await user.get("/api/tags")).json()
    assert sorted(m["name"] for m in tags["models"]) == [
        "llama3.2:latest", "mistral:latest", "phi4:latest", "qwen3:8b",
    ]  # fmt: skip
    models = await (await user.get("/v1/models")).json()
    assert sorted(m["id"] for m in models["data"]) == [
        "llama3.2:latest", "mistral:latest", "phi4:latest", "qwen3:8b",
    ]  # fmt: skip
    head = await user.head("/api/tags")  # the union's headers, without its body
    assert head.status == 200 and int(head.headers["Content-Length"]) > 100
    assert await head.read() == b""
    ps = await (await user.get("/api/ps")).json()
    assert [m["name"] for m in ps["models"]] == ["mistral"]
    # a key with an allow-list sees only its models in the union
    limited = await make_key(db_path, "bob", "x", models=["phi*", "qwen3:8b"])
    resp = await user.get("/api/tags", headers={"Authorization": f"Bearer {limited}"})
    assert sorted(m["name"] for m in (await resp.json())["models"]) == ["phi4:latest", "qwen3:8b"]


async def test_a_dead_upstream_is_failed_over_and_comes_back(
    aiohttp_server: AiohttpServer, several: Several, three: Three
) -> None:
    user, admin = several
    port = three.servers[1].port
    await three.servers[1].close()  # b is gone: mistral must go to c, llama3.2 to a
    three.forget()
    for model in ("mistral", "llama3.2", "mistral", "llama3.2"):
        resp = await user.post("/api/chat", json={"model": model, **CHAT})
        assert resp.status == 200, await resp.text()
    assert _models(three.c) == ["mistral", "mistral"]
    assert _models(three.a) == ["llama3.2", "llama3.2"]
    health = await (await admin.get("/health/ollama")).json()
    states = {u["name"]: u["status"] for u in health["upstreams"]}
    assert states == {"ollama1": "up", "ollama2": "out", "ollama3": "up"}
    assert health["status"] == "degraded"
    # b comes back on its port: a check brings it back within its cool-down and a check
    revived = FakeOllama(models=["llama3.2:latest", "mistral:latest"], loaded=["mistral"])
    await aiohttp_server(revived.app(), port=port)

    async def back() -> bool:
        doc = await (await admin.get("/health/ollama")).json()
        return all(u["status"] == "up" for u in doc["upstreams"])

    for _ in range(100):
        if await back():
            break
        await asyncio.sleep(0.1)
    assert await back()
    resp = await user.post("/api/chat", json={"model": "mistral", **CHAT})
    assert resp.status == 200 and _models(revived) == ["mistral"]


async def test_the_access_line_names_the_upstream_that_answered(
    several: Several, three: Three, caplog: pytest.LogCaptureFixture
) -> None:
    user, _ = several
    await three.servers[1].close()  # b is gone: mistral, loaded there, fails over to c
    with caplog.at_level(logging.INFO, logger="aigateway.access"):
        for model in ("qwen3:8b", "mistral"):
            resp = await user.post("/api/chat", json={"model": model, **CHAT})
            assert resp.status == 200, await resp.text()
    lines = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["upstream=ollama1", "upstream=ollama3"]


async def test_one_upstream_from_a_file_is_the_one_health_and_models_ask(
    aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    """UPSTREAMS_FILE with one Ollama (OLLAMA_BASE_URL left at its default, where nothing
    listens): /health/ollama and /admin/models ask that one (they asked OLLAMA_BASE_URL)."""
    only = UpstreamConfig(name="gpu", url=_url(three.servers[2]))
    settings = Settings(upstreams=(only,), token_db_path=db_path)
    admin_key = await make_key(db_path, "root", "ops", "admin")
    admin = await aiohttp_client(
        create_app(settings), headers={"Authorization": f"Bearer {admin_key}"}
    )
    resp = await admin.get("/health/ollama")
    doc = await resp.json()
    assert resp.status == 200 and doc["ollama_url"] == only.url, doc
    resp = await admin.get("/admin/models")
    assert resp.status == 200, await resp.text()
    assert {m["name"] for m in (await resp.json())["models"]} == {"mistral:latest", "phi4:latest"}


async def test_a_stream_cut_midway_is_never_replayed_elsewhere(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str
) -> None:
    """Its upstream dies after the first line: the client's stream ends with Ollama's own
    error line (the ollama clients raise it), and no other upstream is asked."""
    first = FakeOllama(models=["broken:latest"], loaded=["broken"])
    second = FakeOllama(models=["broken:latest"], loaded=[])
    servers = [await aiohttp_server(f.app()) for f in (first, second)]
    settings = Settings(
        ollama_base_url=",".join(_url(s) for s in servers),
        token_db_path=db_path,
        upstream_check_interval=0.2,
    )
    key = await make_key(db_path)
    client = await aiohttp_client(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    resp = await client.post("/api/chat", json={"model": "broken", "messages": CHAT["messages"]})
    lines = (await resp.read()).splitlines()
    assert resp.status == 200 and len(lines) == 2
    assert "message" in orjson.loads(lines[0]) and "error" in orjson.loads(lines[1])
    assert _models(first) == ["broken"] and _models(second) == []


async def test_a_busy_answer_is_failed_over_before_any_byte_reaches_the_client(
    several: Several, three: Three
) -> None:
    user, _ = several
    three.b.fail_with = 503
    three.forget()
    resp = await user.post("/api/chat", json={"model": "mistral", **CHAT})
    assert resp.status == 200
    assert len(three.b.requests) == 1 and _models(three.c) == ["mistral"]


async def test_no_upstream_up_is_503_with_retry_after_in_the_callers_dialect(
    several: Several, three: Three
) -> None:
    user, _ = several
    three.b.fail_with = 503
    three.c.fail_with = 503
    # b's 503 is failed over to c, whose own 503 is relayed as it came (nothing else left)
    resp = await user.post("/api/chat", json={"model": "mistral", **CHAT})
    assert resp.status == 503 and "busy" in (await resp.json())["error"]
    assert _models(three.b) == _models(three.c) == ["mistral"]
    # now both are out: the gateway answers, with Retry-After, in the caller's dialect
    resp = await user.post(
        "/v1/chat/completions", json={"model": "mistral", "messages": CHAT["messages"]}
    )
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    error = (await resp.json())["error"]
    assert error["type"] and "mistral" in error["message"]
    # other models are not affected
    resp = await user.post("/api/chat", json={"model": "qwen3:8b", **CHAT})
    assert resp.status == 200


async def test_model_management_goes_to_the_upstream_an_admin_names(
    several: Several, three: Three
) -> None:
    _, admin = several
    resp = await admin.delete("/api/delete", json={"model": "gemma3"})
    assert resp.status == 400 and "name one with X-Upstream" in (await resp.json())["error"]
    three.forget()
    resp = await admin.post(
        "/api/pull", json={"model": "gemma3", "stream": False}, headers={"X-Upstream": "ollama3"}
    )
    assert resp.status == 200
    assert _models(three.c) == ["gemma3"] and not _models(three.a) and not _models(three.b)
    assert "X-Upstream" not in three.c.requests[0].headers  # ours, not passed on
    resp = await admin.post("/api/pull", json={"model": "gemma3"}, headers={"X-Upstream": "nope"})
    assert resp.status == 400 and "ollama1, ollama2, ollama3" in (await resp.json())["error"]


async def test_a_pull_without_a_named_upstream_pulls_everywhere(
    several: Several, three: Three
) -> None:
    _, admin = several
    three.forget()
    resp = await admin.post("/api/pull", json={"model": "gemma3"})
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert [fake_pulls for fake_pulls in map(_models, three.fakes)] == [["gemma3"]] * 3
    # three pulls' progress, one success, at the end
    assert sum(line.get("status") == "success" for line in lines) == 1
    assert lines[-1] == {"status": "success"} and len(lines) > 10
    three.forget()
    resp = await admin.post("/api/pull", json={"model": "gemma3", "stream": False})
    assert resp.status == 200 and await resp.json() == {"status": "success"}
    # one that fails: the stream ends with its error, naming it
    three.c.fail_with = 500
    resp = await admin.post("/api/pull", json={"model": "gemma3"})
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1]["error"].startswith("ollama3: ") and not any(
        line.get("status") == "success" for line in lines
    )
    resp = await admin.post("/api/pull", json={"model": "gemma3", "stream": False})
    assert resp.status == 500


async def test_a_stop_midway_through_a_pull_everywhere_ends_its_stream_with_an_error_line(
    several: Several, three: Three
) -> None:
    """A graceful stop cuts an answer on its way at its upstream's response. A pull on
    every Ollama had none registered: its task was cancelled like one not answering yet,
    and a 503's head and body were written into the 200 stream it had begun."""
    user, admin = several
    for fake in three.fakes:
        fake.slow_interval = 0.2
    resp = await admin.post("/api/pull", json={"model": "slow"})
    assert resp.status == 200
    first = await resp.content.readline()
    assert orjson.loads(first)["status"]
    await user.app[RELAY].in_flight.drain(0)  # (one app serves both clients)
    # (a second response inside would break the chunked body, or hang it)
    rest = await asyncio.wait_for(resp.read(), 10)
    lines = [orjson.loads(line) for line in rest.splitlines()]
    assert lines[-1] == {"error": "aigateway: the gateway is shutting down"}
    assert not any(line.get("status") == "success" for line in lines)


async def test_answers_from_every_upstream_carry_the_keys_rate_headers(
    aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    settings = Settings(
        ollama_base_url=",".join(_url(s) for s in three.servers), token_db_path=db_path
    )
    admin_key = await make_key(db_path, "root", "ops", "admin", limits=KeyLimits(rpm=100))
    admin = await aiohttp_client(
        create_app(settings), headers={"Authorization": f"Bearer {admin_key}"}
    )
    remaining = []
    for method, path, body in (
        ("GET", "/api/tags", None),  # the union of the three lists
        ("POST", "/api/pull", {"model": "gemma3"}),  # streamed from each in turn
        ("POST", "/api/pull", {"model": "gemma3", "stream": False}),  # the last answer
    ):
        resp = await admin.request(method, path, json=body)
        assert resp.status == 200, (path, await resp.text())
        await resp.read()
        assert resp.headers["X-RateLimit-Limit"] == "100", (path, dict(resp.headers))
        assert resp.headers["X-Request-Id"]
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining == [99, 98, 97]


async def test_weights_share_requests_among_equals(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str
) -> None:
    heavy, light = FakeOllama(models=["m:latest"]), FakeOllama(models=["m:latest"])
    servers = [await aiohttp_server(f.app()) for f in (heavy, light)]
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(
        f'[[upstream]]\nname = "heavy"\nurl = "{_url(servers[0])}"\nweight = 3\n'
        f'[[upstream]]\nname = "light"\nurl = "{_url(servers[1])}"\n'
    )
    key = await make_key(db_path)
    settings = Settings(token_db_path=db_path, upstreams=upstreams_from_file(str(path), {}))
    client = await aiohttp_client(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    for _ in range(40):
        assert (await client.post("/api/chat", json={"model": "m", **CHAT})).status == 200
    assert (len(_models(heavy)), len(_models(light))) == (30, 10)


# --- cloud upstreams -----------------------------------------------------------------


async def test_cloud_upstreams_get_their_own_key_never_the_clients(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    openai, anthropic = FakeOllama(), FakeOllama()
    o_server, a_server = await aiohttp_server(openai.app()), await aiohttp_server(anthropic.app())
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(
        f'[[upstream]]\nname = "local"\nurl = "{_url(three.servers[0])}"\n'
        f'[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "{_url(o_server)}/v1"\n'
        'key_env = "OA_KEY"\nmodels = ["gpt-4o*"]\n'
        f'[[upstream]]\nname = "an"\nkind = "anthropic"\nurl = "{_url(a_server)}/v1"\n'
        'key_env = "AN_KEY"\nmodels = ["claude-*"]\nopen = true\n'
    )
    upstreams = upstreams_from_file(str(path), {"OA_KEY": "sk-oa-secret", "AN_KEY": "sk-an"})
    key = await make_key(db_path, models=["gpt-4o*", "claude-*", "llama3*", "qwen*"])
    anyone = await make_key(db_path, "bob", "any")
    settings = Settings(token_db_path=db_path, upstreams=upstreams, upstream_check_interval=0.2)
    client = await aiohttp_client(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    gpt = {"model": "gpt-4o-mini", "messages": CHAT["messages"]}
    # a cloud API paid with the gateway's key: not for a key whose allow-list does not
    # name the model (here: a key without one), unless the upstream is open
    resp = await client.post(
        "/v1/chat/completions", json=gpt, headers={"Authorization": f"Bearer {anyone}"}
    )
    assert resp.status == 403 and (await resp.json())["error"]["reason"] == "model_not_allowed"
    assert not [r for r in openai.requests if r.method == "POST"]
    resp = await client.post("/v1/chat/completions", json=gpt)
    assert resp.status == 200, await resp.text()
    sent = [r for r in openai.requests if r.method == "POST"]
    assert len(sent) == 1 and sent[0].path_qs == "/v1/chat/completions"
    assert sent[0].headers["Authorization"] == "Bearer sk-oa-secret"
    assert key not in repr(sent[0].headers) and key.encode() not in sent[0].body
    resp = await client.post(
        "/v1/messages",
        json={"model": "claude-sonnet-4", "max_tokens": 10, "messages": CHAT["messages"]},
    )
    assert resp.status == 200, await resp.text()
    sent = [r for r in anthropic.requests if r.method == "POST"]
    assert sent[0].headers["x-api-key"] == "sk-an" and "Authorization" not in sent[0].headers
    resp = await client.post(  # an open one serves every key
        "/v1/messages",
        json={"model": "claude-sonnet-4", "max_tokens": 10, "messages": CHAT["messages"]},
        headers={"Authorization": f"Bearer {anyone}"},
    )
    assert resp.status == 200, await resp.text()
    # counted like Ollama's (once the usage writer's batch is in)
    for _ in range(50):
        usage = (await (await client.get("/admin/me")).json())["usage"]["all_time"]
        if usage["requests"] == 2:
            break
        await asyncio.sleep(0.1)
    assert usage["requests"] == 2 and usage["total_tokens"] > 0, usage
    # a native route for a cloud model: a clear 404
    resp = await client.post("/api/chat", json={"model": "gpt-4o-mini", **CHAT})
    assert resp.status == 404 and "/v1/chat/completions" in (await resp.json())["error"]
    # the upstreams' keys appear nowhere an admin (or anyone) can read
    admin_key = await make_key(db_path, "root", "ops", "admin")
    for route in ("/admin/upstreams", "/health/ollama", "/admin/upstreams"):
        resp = await client.get(route, headers={"Authorization": f"Bearer {admin_key}"})
        text = await resp.text()
        assert '"oa"' in text and "sk-oa-secret" not in text and "sk-an" not in text, route
    # /v1/models: the union, the cloud API's list cut down to its patterns
    ids = sorted(m["id"] for m in (await (await client.get("/v1/models")).json())["data"])
    assert "llama3.2:latest" in ids and not any(i.startswith("deepseek") for i in ids[2:])


# What a client may choose on its own: the paying account (OpenAI-Organization,
# OpenAI-Project), an API's features (anthropic-beta, anthropic-version), anything else.
CHOOSING = {
    "OpenAI-Organization": "org-client",
    "OpenAI-Project": "proj-client",
    "anthropic-beta": "client-beta-1",
    "anthropic-version": "2099-01-01",
    "X-Custom": "custom",
    "Cookie": "session=client",
}
HARMLESS = {
    "Accept": "application/json",
    "Accept-Encoding": "gzip",
    "User-Agent": "client-agent/1.0",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def test_cloud_upstreams_get_only_the_client_headers_they_allow(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    """A cloud API is paid with the gateway's key: a client's headers that choose the
    account or the API's features stay behind, unless the upstream's pass_headers names
    them; an Ollama still gets every header but the dropped ones."""
    fakes = {name: FakeOllama() for name in ("oa", "an", "beta", "ver")}
    urls = {name: _url(await aiohttp_server(fake.app())) for name, fake in fakes.items()}
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(
        f'[[upstream]]\nname = "local"\nurl = "{_url(three.servers[0])}"\n'
        f'[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "{urls["oa"]}/v1"\n'
        'key_env = "K"\nmodels = ["gpt-4o*"]\nopen = true\n'
        f'[[upstream]]\nname = "an"\nkind = "anthropic"\nurl = "{urls["an"]}/v1"\n'
        'key_env = "K"\nmodels = ["claude-a*"]\nopen = true\n'
        f'[[upstream]]\nname = "beta"\nkind = "anthropic"\nurl = "{urls["beta"]}/v1"\n'
        'key_env = "K"\nmodels = ["claude-b*"]\nopen = true\npass_headers = ["anthropic-beta"]\n'
        f'[[upstream]]\nname = "ver"\nkind = "anthropic"\nurl = "{urls["ver"]}/v1"\n'
        'key_env = "K"\nmodels = ["claude-v*"]\nopen = true\n'
        'pass_headers = ["Anthropic-Version", "anthropic-beta"]\n'
    )
    upstreams = upstreams_from_file(str(path), {"K": "sk-gateway"})
    key = await make_key(db_path)
    settings = Settings(token_db_path=db_path, upstreams=upstreams)
    client = await aiohttp_client(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    headers = {**CHOOSING, **HARMLESS}
    messages = CHAT["messages"]
    resp = await client.post(
        "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": messages}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    for model in ("claude-a1", "claude-b1", "claude-v1"):
        body = {"model": model, "max_tokens": 10, "messages": messages}
        resp = await client.post("/v1/messages", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
    sent = {
        name: _lower([r for r in fake.requests if r.method == "POST"][-1].headers)
        for name, fake in fakes.items()
    }
    for name, got in sent.items():
        # the allowed four go on (Accept-Encoding as identity, as ever); a traceparent
        # only where pass_headers names it (tests/test_traces.py)
        assert got["content-type"] == "application/json", name
        assert got["accept"] == "application/json", name
        assert got["accept-encoding"] == "identity", name
        assert got["user-agent"] == "client-agent/1.0", name
        for header in (
            "openai-organization",
            "openai-project",
            "x-custom",
            "cookie",
            "traceparent",
        ):
            assert header not in got, (name, header)
        assert key not in repr(got), name
    assert sent["oa"]["authorization"] == "Bearer sk-gateway"
    assert "anthropic-beta" not in sent["oa"] and "anthropic-version" not in sent["oa"]
    # the gateway's anthropic-version, whatever the client says, unless pass_headers
    # names it; anthropic-beta only where pass_headers names it
    assert sent["an"]["anthropic-version"] == ANTHROPIC_VERSION
    assert "anthropic-beta" not in sent["an"]
    assert sent["beta"]["anthropic-version"] == ANTHROPIC_VERSION
    assert sent["beta"]["anthropic-beta"] == "client-beta-1"
    assert sent["ver"]["anthropic-version"] == "2099-01-01"
    assert sent["ver"]["anthropic-beta"] == "client-beta-1"
    for name in ("an", "beta", "ver"):
        assert sent[name]["x-api-key"] == "sk-gateway" and "authorization" not in sent[name]
    # an Ollama: every client header but the dropped ones, as before
    resp = await client.post("/api/chat", json={"model": "llama3.2", **CHAT}, headers=headers)
    assert resp.status == 200, await resp.text()
    got = _lower([r for r in three.a.requests if r.method == "POST"][-1].headers)
    assert got["x-custom"] == "custom" and got["openai-organization"] == "org-client"
    assert got["anthropic-version"] == "2099-01-01" and "cookie" not in got


def test_request_headers_send_one_anthropic_version() -> None:
    """Exactly one anthropic-version: the gateway's, or the client's where passed."""
    request = make_mocked_request(
        "POST", "/v1/messages", headers={"anthropic-version": "2099-01-01", "X-Custom": "1"}
    )

    def versions(config: UpstreamConfig) -> list[str]:
        return [v for n, v in request_headers(request, config) if n.lower() == "anthropic-version"]

    plain = UpstreamConfig(name="an", url="http://x/v1", kind="anthropic", key="k")
    passed = UpstreamConfig(
        name="an",
        url="http://x/v1",
        kind="anthropic",
        key="k",
        pass_headers=frozenset({"Anthropic-Version"}),
    )
    assert versions(plain) == [ANTHROPIC_VERSION]
    assert versions(passed) == ["2099-01-01"]
    ollama = UpstreamConfig(name="o", url="http://x")
    assert ("X-Custom", "1") in request_headers(request, ollama)
    assert ("X-Custom", "1") not in request_headers(request, plain)


async def test_admin_models_lists_a_cloud_apis_models_after_the_ollamas(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    """/admin/models (the dashboard's model list) showed only what the Ollamas have: a
    cloud API's models, cut down to its patterns, now follow, each model once."""
    cloud = FakeOllama(models=["gpt-4o-mini", "gpt-4o", "o3-pro", "llama3.2:latest"])
    cloud_server = await aiohttp_server(cloud.app())
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(
        f'[[upstream]]\nname = "local"\nurl = "{_url(three.servers[0])}"\n'
        f'[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "{_url(cloud_server)}/v1"\n'
        'key_env = "OA_KEY"\nmodels = ["gpt-4o*", "llama3.2*"]\n'
    )
    settings = Settings(
        token_db_path=db_path, upstreams=upstreams_from_file(str(path), {"OA_KEY": "sk-oa"})
    )
    everything = await make_key(db_path)
    some = await make_key(db_path, "bob", "ci", models=["gpt-4o-mini", "qwen3*"])
    client = await aiohttp_client(create_app(settings))
    names = {}
    for key in (everything, some):
        resp = await client.get("/admin/models", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200, await resp.text()
        names[key] = [m["name"] for m in (await resp.json())["models"]]
    # the Ollama's two, then the cloud API's within its patterns (not o3-pro), and its
    # llama3.2 not twice
    assert names[everything] == ["llama3.2:latest", "qwen3:8b", "gpt-4o-mini", "gpt-4o"]
    assert names[some] == ["qwen3:8b", "gpt-4o-mini"]  # the key's own allow-list
    probe = [r for r in cloud.requests if r.path_qs == "/v1/models"][-1]
    assert probe.headers["Authorization"] == "Bearer sk-oa"


# --- configuration ---------------------------------------------------------------------

_CLOUD = (
    '[[upstream]]\nname = "an"\nkind = "anthropic"\nurl = "http://x/v1"\n'
    'key_env = "AN_KEY"\nmodels = ["claude-*"]\n'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense = [", "not valid TOML"),
        ("[other]\nx = 1", "unknown table 'other'"),
        ('[[upstream]]\nname = "a"', "upstream #1 (a): url is required"),
        ('[[upstream]]\nname = "a b"\nurl = "http://x"', "upstream #1: name must be"),
        ('[[upstream]]\nname = "a"\nurl = "ftp://x"', "expected an http:// or https:// URL"),
        ('[[upstream]]\nname = "a"\nurl = "http://u:p@x"', "put the key in key_env"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nkind = "bard"', "kind must be one of"),
        ('[[upstream]]\nname = "a"\nkind = "openai"\nurl = "http://x"', "needs key_env"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nkey_env = "NOT_SET_X"', "is not set"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nweight = 0', "weight must be"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nmax_concurrent = 0', "max_concurrent"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nopen = true', "open is for cloud kinds"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nopen = "yes"', "open must be true"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\nmodels = []', "models must be a list"),
        ('[[upstream]]\nname = "a"\nurl = "http://x"\ncolour = 1', "unknown field 'colour'"),
        (f'{_CLOUD}pass_headers = "anthropic-beta"', "(an): pass_headers must be a list"),
        (f'{_CLOUD}pass_headers = ["a b"]', "(an): pass_headers must be a list"),
        (f"{_CLOUD}pass_headers = [1]", "(an): pass_headers must be a list"),
        (f'{_CLOUD}pass_headers = ["{"x" * 101}"]', "pass_headers must be a list"),
        (_CLOUD + "pass_headers = [" + ", ".join(['"x"'] * 33) + "]", "at most 32 header"),
        (f'{_CLOUD}pass_headers = ["Authorization"]', "cannot pass authorization on"),
        (f'{_CLOUD}pass_headers = ["X-Api-Key"]', "cannot pass x-api-key on"),
        (f'{_CLOUD}pass_headers = ["host"]', "cannot pass host on"),
        (f'{_CLOUD}pass_headers = ["Content-Length"]', "cannot pass content-length on"),
        (f'{_CLOUD}pass_headers = ["Transfer-Encoding"]', "cannot pass transfer-encoding on"),
        (f'{_CLOUD}pass_headers = ["Connection"]', "cannot pass connection on"),
        (f'{_CLOUD}pass_headers = ["anthropic-beta", "Cookie"]', "cannot pass cookie on"),
        (
            '[[upstream]]\nname = "a"\nurl = "http://x"\npass_headers = ["anthropic-beta"]',
            "(a): pass_headers is for cloud kinds",
        ),
        (
            '[[upstream]]\nname = "a"\nurl = "http://x"\n[[upstream]]\nname = "a"\nurl = "http://y"',
            "the name 'a' is used twice",
        ),
        (
            '[[upstream]]\nname = "a"\nurl = "http://x"\n[[upstream]]\nname = "b"\nurl = "http://x/"',
            "the URL http://x is listed twice",
        ),
    ],
)
def test_a_bad_upstreams_file_is_one_line_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    with pytest.raises(UpstreamsError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        upstreams_from_file(str(path), {"AN_KEY": "k"})
    assert "\n" not in str(e.value)
    with pytest.raises(SettingsError) as e2:
        Settings.from_env({"UPSTREAMS_FILE": str(path), "AN_KEY": "k"}, env_file=None)
    assert str(e2.value) == str(e.value)


def test_ollama_base_url_takes_several_urls() -> None:
    settings = Settings.from_env(
        {"OLLAMA_BASE_URL": "http://a:11434, http://b:11434/", "UPSTREAM_API_KEY": "k"},
        env_file=None,
    )
    found = settings.upstream_list
    assert [(u.name, u.url, u.key) for u in found] == [
        ("ollama1", "http://a:11434", "k"),
        ("ollama2", "http://b:11434", "k"),
    ]
    with pytest.raises(SettingsError, match="OLLAMA_BASE_URL"):
        Settings.from_env({"OLLAMA_BASE_URL": "http://a,gopher://b"}, env_file=None)


def test_upstream_keys_may_come_from_the_env_file(tmp_path: Path) -> None:
    (tmp_path / "up.toml").write_text(
        '[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "https://api.example/v1"\n'
        'key_env = "OA_KEY"\nmodels = ["gpt-*"]\n'
    )
    env = tmp_path / ".env"
    env.write_text("UPSTREAMS_FILE=up.toml\nOA_KEY=sk-from-env-file\n")  # beside the .env
    settings = Settings.from_env({}, env_file=env)
    assert settings.upstream_list[0].key == "sk-from-env-file"
    assert "sk-from-env-file" not in repr(settings)


# --- the fair queue --------------------------------------------------------------------


@pytest.fixture
async def one_slot(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str
) -> OneSlot:
    """A gateway in front of one Ollama that takes one request at a time (max_concurrent
    1), with two user keys; queued requests give up after 1 s."""
    fake = FakeOllama(slow_interval=0.05)
    server = await aiohttp_server(fake.app())
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(f'[[upstream]]\nname = "gpu"\nurl = "{_url(server)}"\nmax_concurrent = 1\n')
    settings = Settings(
        token_db_path=db_path,
        upstreams=upstreams_from_file(str(path), {}),
        upstream_queue_timeout=1.0,
    )
    greedy, modest = await make_key(db_path, "greedy", "k"), await make_key(db_path, "modest", "k")
    admin_key = await make_key(db_path, "root", "ops", "admin")
    client = await aiohttp_client(create_app(settings))
    return fake, client, greedy, modest, admin_key


def _chat(
    client: TestClient[web.Request, web.Application], key: str, label: str, model: str = "slow"
) -> _RequestContextManager:
    return client.post(
        "/api/chat",
        json={"model": model, "messages": [{"role": "user", "content": label}]},
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_a_key_with_many_queued_requests_cannot_starve_another(one_slot: OneSlot) -> None:
    fake, client, greedy, modest, _ = one_slot

    async def run(key: str, label: str) -> int:
        async with _chat(client, key, label) as resp:
            await resp.read()
            return resp.status

    pool = client.app[RELAY].pool
    first = asyncio.create_task(run(greedy, "g0"))
    await eventually(lambda: len(fake.requests) == 1)
    rest = [asyncio.create_task(run(greedy, f"g{n}")) for n in range(1, 6)]
    await eventually(lambda: len(pool.queue) == 5)  # the greedy key's five wait first
    modest_task = asyncio.create_task(run(modest, "m0"))
    assert await asyncio.gather(first, *rest, modest_task) == [200] * 7
    order = [orjson.loads(r.body)["messages"][0]["content"] for r in fake.requests]
    # served one at a time: g0 (no wait), then the keys in turn: g1, m0, g2, ...
    assert order.index("m0") <= 2, order
    assert sorted(order) == ["g0", "g1", "g2", "g3", "g4", "g5", "m0"]


async def test_a_queued_request_times_out_or_leaves(one_slot: OneSlot) -> None:
    fake, client, greedy, modest, _ = one_slot
    holding = await _chat(client, greedy, "hold", model="stall")  # holds the slot
    assert holding.status == 200
    # a queued client that leaves: it leaves the queue, and never reaches Ollama
    leaving = asyncio.create_task(_chat(client, modest, "leaves").__aenter__())
    pool = client.app[RELAY].pool
    await eventually(lambda: len(pool.queue) == 1)
    leaving.cancel()
    await eventually(lambda: len(pool.queue) == 0)
    # one that waits past UPSTREAM_QUEUE_TIMEOUT: 503 with Retry-After
    resp = await _chat(client, modest, "waits")
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert "UPSTREAM_QUEUE_TIMEOUT" in (await resp.json())["error"]
    holding.close()
    # the slot is free again once the stalled stream ends
    await eventually(lambda: pool.upstreams[0].in_flight == 0)
    contents = [orjson.loads(r.body)["messages"][0]["content"] for r in fake.requests]
    assert contents == ["hold"]


# --- metrics -------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_requests_tokens_refusals_and_upstreams(
    aiohttp_client: AiohttpClient, three: Three, db_path: str
) -> None:
    settings = Settings(
        ollama_base_url=",".join(_url(s) for s in three.servers),
        token_db_path=db_path,
        upstream_check_interval=0.2,
        metrics="admin",
    )
    user_key = await make_key(db_path)
    limited = await make_key(db_path, "bob", "x", models=["phi*"], limits=KeyLimits(rpm=1))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    client = await aiohttp_client(create_app(settings))
    as_user = {"Authorization": f"Bearer {user_key}"}
    as_limited = {"Authorization": f"Bearer {limited}"}
    for model in ("phi4", "phi4", "qwen3:8b", "no-such-model"):
        await client.post("/api/chat", json={"model": model, **CHAT}, headers=as_user)
    assert (
        await client.post("/api/chat", json={"model": "qwen3:8b", **CHAT}, headers=as_limited)
    ).status == 403
    assert (
        await client.post("/api/chat", json={"model": "phi4", **CHAT}, headers=as_limited)
    ).status == 200
    assert (
        await client.post("/api/chat", json={"model": "phi4", **CHAT}, headers=as_limited)
    ).status == 429
    assert (
        await client.get("/api/tags", headers={"Authorization": "Bearer aig_nope"})
    ).status == 401
    # only an admin may scrape
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=as_user)).status == 403
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"})
    assert resp.status == 200 and resp.content_type == "text/plain"
    got = _samples(await resp.text())

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    chat = {"route": "/api/chat", "status": "200"}
    # (each model by its one identity)
    assert value("aigateway_requests_total", **chat, model="phi4:latest", upstream="ollama3") == 3
    assert value("aigateway_requests_total", **chat, model="qwen3:8b", upstream="ollama1") == 1
    # a model nobody has is no label of its own
    assert not any("no-such-model" in str(k) for k in got)
    assert value("aigateway_tokens_total", model="phi4:latest", kind="completion") > 0
    assert value("aigateway_request_duration_seconds_count", route="/api/chat") == 5
    # (the key refusals: the malformed key, and the scrape without one; every reason of
    # errors.Refused has its series, the others at 0)
    counts = {"model_not_allowed": 1, "rate_limit": 1, "malformed_key": 1, "missing_key": 1}
    counts["admin_only"] = 1  # the user key's scrape
    for reason in Refused:
        assert value("aigateway_refusals_total", reason=reason) == counts.get(reason, 0), reason
    for name in ("ollama1", "ollama2", "ollama3"):
        assert value("aigateway_upstream_up", upstream=name) == 1
    assert value("aigateway_in_flight") == 0


async def test_an_upstream_killed_under_load_fails_nothing_that_had_not_begun(
    aiohttp_client: AiohttpClient, db_path: str
) -> None:
    """Two fake Ollama processes, streams running through both, one killed with SIGKILL
    midway: streams it was sending end with Ollama's error line (never cut silently),
    every other request, and every request after the kill, succeeds."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "aigateway.testing.fake_ollama", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        ports = [await _port_taken(proc) for proc in procs]
        settings = Settings(
            ollama_base_url=",".join(f"http://127.0.0.1:{p}" for p in ports),
            token_db_path=db_path,
            upstream_check_interval=0.2,
        )
        key = await make_key(db_path)
        client = await aiohttp_client(
            create_app(settings), headers={"Authorization": f"Bearer {key}"}
        )

        async def stream() -> list[dict[str, object]]:
            async with client.post(
                "/api/chat", json={"model": "slow", "messages": CHAT["messages"]}
            ) as resp:
                assert resp.status == 200
                return [orjson.loads(line) for line in (await resp.read()).splitlines()]

        running = [asyncio.create_task(stream()) for _ in range(20)]
        await asyncio.sleep(0.15)  # every stream has begun
        procs[1].kill()
        after = [asyncio.create_task(stream()) for _ in range(20)]
        cut = 0
        for lines in await asyncio.gather(*running):
            if "error" in lines[-1]:
                cut += 1
            else:
                assert lines[-1].get("done") is True, lines
        assert 0 < cut < 20  # some were on the killed one, some not
        for lines in await asyncio.gather(*after):
            assert lines[-1].get("done") is True, lines  # failed over, or sent to the live one
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()  # and its pipe closed


async def _port_taken(proc: subprocess.Popen[str]) -> int:
    """The port a fake Ollama started with --port 0 listens on, once it listens."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.strip().isdigit(), f"the fake Ollama said {line!r}"
    return int(line)


async def test_a_hostile_upstreams_lists_are_read_as_hostile_input(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, db_path: str
) -> None:
    """Junk entries in a model list are left out, a list too large or not JSON takes the
    upstream out, and nothing of it breaks the union or the other upstreams."""
    junk = {
        "models": [1, None, {"name": 5}, {"name": ""}, {"model": "good:latest"}],
        "unrelated": {"deep": ["x"] * 10},
    }

    async def tags(_request: web.Request) -> web.Response:
        return web.json_response(junk)

    async def ps(_request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": ["not", "a", "name"]}]})

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(body=b'{"models": [' + b" " * (17 * 1024**2) + b"]}")

    hostile, oversized = web.Application(), web.Application()
    hostile.router.add_get("/api/tags", tags)
    hostile.router.add_get("/api/ps", ps)
    oversized.router.add_get("/api/tags", huge)
    oversized.router.add_get("/api/ps", huge)
    honest = FakeOllama(models=["llama3.2:latest"])
    servers = [await aiohttp_server(app) for app in (hostile, oversized, honest.app())]
    settings = Settings(
        ollama_base_url=",".join(_url(s) for s in servers),
        token_db_path=db_path,
        upstream_check_interval=0.2,
    )
    key = await make_key(db_path, "root", "ops", "admin")
    client = await aiohttp_client(create_app(settings), headers={"Authorization": f"Bearer {key}"})
    pool = client.app[RELAY].pool
    first, second, third = pool.upstreams
    assert first.up and first.models == frozenset({"good:latest"}) and not first.loaded
    assert not second.up and "larger than" in str(second.reason)
    assert third.up
    listed = (await (await client.get("/api/tags")).json())["models"]
    names = [m.get("name") or m.get("model") for m in listed]
    assert names == ["good:latest", "llama3.2:latest"]
    resp = await client.post("/api/chat", json={"model": "llama3.2", **CHAT})
    assert resp.status == 200 and _models(honest) == ["llama3.2"]


def test_an_answer_carries_our_request_id_and_rate_limits_in_place_of_the_upstreams() -> None:
    theirs = CIMultiDict(
        [("Content-Type", "application/json"), ("X-Request-Id", "theirs"),
         ("x-ratelimit-limit", "5"), ("Connection", "close"), ("Content-Length", "3"),
         ("X-Other", "kept")]
    )  # fmt: skip
    rated = CIMultiDict(response_headers(theirs, "ours", rate_limit_headers(10, 9, 60)))
    assert rated.getall("X-Request-Id") == ["ours"]
    assert rated.getall("X-RateLimit-Limit") == ["10"] and rated["X-RateLimit-Reset"] == "60"
    assert "Content-Length" not in rated and "Connection" not in rated
    assert rated["X-Other"] == "kept" and rated["Content-Type"] == "application/json"
    # A key without limits: none of ours, so the upstream's pass as they came.
    unrated = CIMultiDict(response_headers(theirs, "ours", ()))
    assert unrated.getall("X-RateLimit-Limit") == ["5"]
    assert unrated.getall("X-Request-Id") == ["ours"]
