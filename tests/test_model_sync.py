"""sync-models and list-models: what Ollama says of its models, stored as checked text
and numbers, shown with each model's price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from aigateway.testing.fake_ollama import FakeOllama

from .test_cli_live import cli


async def test_models_are_synced_and_listed_with_their_prices(
    upstream: TestServer, db_path: str
) -> None:
    ollama = str(upstream.make_url("")).rstrip("/")
    code, _, err = await cli(
        "--set-price", "llama3*", "--per-million-output", "0.40", "--db", db_path
    )
    assert code == 0, err
    code, _, err = await cli("--sync-models", "--ollama", ollama, "--db", db_path)
    assert code == 0 and f"Synced 2 models from {ollama}." in err
    code, out, _ = await cli("--list-models", "--format", "json", "--db", db_path)
    listed = {m["name"]: m for m in json.loads(out)}
    assert set(listed) == {"deepseek-r1:latest", "llama3.2:latest"}
    llama = listed["llama3.2:latest"]
    assert (llama["family"], llama["parameter_size"], llama["quantization"]) == (
        "llama",
        "3.2B",
        "Q4_K_M",
    )
    assert llama["context_length"] == 131072 and llama["size"] == 2019393189
    assert llama["per_million_output"] == "0.400000" and llama["price_pattern"] == "llama3*"
    assert listed["deepseek-r1:latest"]["per_million_output"] is None  # free
    code, out, _ = await cli("--list-models", "--db", db_path)
    assert "llama3.2:latest" in out and "131072" in out


async def test_a_hostile_ollama_leaves_only_checked_values(
    aiohttp_server: AiohttpServer,
    db_path: str,
) -> None:
    tags = {
        "models": [
            {"name": "ok:1b", "size": "big", "digest": 7, "details": "nope"},
            {"name": "bad\x1b[31m", "size": 1},
            {"name": "x" * 500},
            "not an object",
            {"name": "shy:1b", "size": 2**70},
        ]
    }

    async def tags_handler(_: web.Request) -> web.Response:
        return web.json_response(tags)

    async def show(request: web.Request) -> web.Response:
        if (await request.json())["model"] == "shy:1b":
            return web.Response(status=500, text="no")
        return web.json_response(
            {
                "details": {"family": "=cmd|' /C calc'!A0", "parameter_size": ["1B"]},
                "model_info": {"general.architecture": "llama", "llama.context_length": -1},
            }
        )

    app = web.Application()
    app.router.add_get("/api/tags", tags_handler)
    app.router.add_post("/api/show", show)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    code, _, err = await cli("--sync-models", "--ollama", url, "--db", db_path)
    assert code == 0 and "Synced 2 models" in err, err
    code, out, _ = await cli("--list-models", "--format", "json", "--db", db_path)
    ok, shy = json.loads(out)
    assert ok["name"] == "ok:1b" and ok["size"] is None and ok["digest"] is None
    assert ok["context_length"] is None and ok["parameter_size"] is None
    assert ok["family"] == "=cmd|' /C calc'!A0"  # text, kept; CSV neutralises it:
    code, out, _ = await cli("--list-models", "--format", "csv", "--db", db_path)
    assert "'=cmd" in out
    assert shy["name"] == "shy:1b" and shy["size"] is None and shy["family"] is None


async def test_an_unreachable_ollama_is_one_line_and_exit_1(db_path: str) -> None:
    code, out, err = await cli("--sync-models", "--ollama", "http://127.0.0.1:1", "--db", db_path)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "Error: cannot reach Ollama at http://127.0.0.1:1/api/tags: ClientConnectorError"
    ]
    code, _, err = await cli("--list-models", "--ollama", "http://x", "--db", db_path)
    assert code == 1 and "--ollama goes with --sync-models" in err


async def test_models_are_synced_from_every_ollama_upstream(
    aiohttp_server: AiohttpServer, db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UPSTREAMS_FILE's Ollamas, each asked with its own key; a cloud API is not asked."""
    first = FakeOllama(models=["llama3.2:latest", "qwen3:8b"])
    second = FakeOllama(models=["llama3.2:latest", "phi4:latest"])
    urls = [str((await aiohttp_server(f.app())).make_url("")).rstrip("/") for f in (first, second)]
    upstreams = tmp_path / "upstreams.toml"
    upstreams.write_text(
        f'[[upstream]]\nname = "a"\nurl = "{urls[0]}"\nkey_env = "A_KEY"\n'
        f'[[upstream]]\nname = "b"\nurl = "{urls[1]}"\n'
        '[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        'key_env = "OA_KEY"\nmodels = ["gpt-*"]\n'
    )
    monkeypatch.setenv("UPSTREAMS_FILE", str(upstreams))
    monkeypatch.setenv("A_KEY", "sk-a")
    monkeypatch.setenv("OA_KEY", "sk-oa")
    code, _, err = await cli("--sync-models", "--db", db_path)
    assert code == 0 and f"Synced 3 models from {urls[0]}, {urls[1]}." in err, err
    code, out, _ = await cli("--list-models", "--format", "json", "--db", db_path)
    assert {m["name"] for m in json.loads(out)} == {"llama3.2:latest", "qwen3:8b", "phi4:latest"}
    assert {r.headers.get("Authorization") for r in first.requests} == {"Bearer sk-a"}
    assert {r.headers.get("Authorization") for r in second.requests} == {None}
