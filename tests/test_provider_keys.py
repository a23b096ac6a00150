"""OPENAI_API_KEY and ANTHROPIC_API_KEY, as the billing gateway's users set them: each adds
a cloud upstream beside Ollama (closed to keys whose allow-list does not name its models),
from the environment or `.env`; with UPSTREAMS_FILE they are ignored, with one warning.
Fake OpenAI and Anthropic APIs on loopback (the fake Ollama speaks both dialects)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.access.allowlist import model_allowed
from aigateway.settings import PROVIDER_VARIABLES, SettingsError
from aigateway.settings_reference import markdown_reference
from aigateway.testing.fake_ollama import FakeOllama

from .conftest import make_key

ROOT = Path(__file__).resolve().parent.parent
OPENAI_KEY = "sk-proj-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-anthropic-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
GPT = {"model": "gpt-4o-mini", "messages": MESSAGES}
CLAUDE = {"model": "claude-sonnet-4", "max_tokens": 10, "messages": MESSAGES}


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _posts(fake: FakeOllama) -> list[str]:
    return [r.path_qs for r in fake.requests if r.method == "POST"]


def test_the_tests_run_without_the_developers_provider_settings(tmp_path: Path) -> None:
    """conftest.py removes them for the session, before tests are imported: a developer's
    own OPENAI_API_KEY neither reaches a fake upstream nor adds an upstream to a gateway a
    test starts, in this process or in one a test starts. (Checked in a pytest run of
    its own, started with every one of them set.)"""
    assert not [v for v in PROVIDER_VARIABLES if v in os.environ]
    assert Settings.from_env(env_file=None).provider_upstreams == ()
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(
        "import os, subprocess, sys\n\n"
        "def test_probe():\n"
        f"    names = {PROVIDER_VARIABLES!r}\n"
        "    assert os.environ['PROBE'] == 'set'\n"
        "    assert [n for n in names if n in os.environ] == []\n"
        "    code = 'import os, sys; sys.exit(sum(n in os.environ for n in sys.argv[1:]))'\n"
        "    assert subprocess.run([sys.executable, '-c', code, *names]).returncode == 0\n"
    )
    env = {**os.environ, "PROBE": "set", **{v: "sk-developers-own" for v in PROVIDER_VARIABLES}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only conftest.py, as a plugin
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("source", ["environment", ".env"])
async def test_openai_api_key_adds_openai_beside_ollama_for_keys_that_name_the_model(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    upstream: TestServer,
    fake: FakeOllama,
    db_path: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    openai = FakeOllama()
    openai_url = _url(await aiohttp_server(openai.app())) + "/v1"
    values = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": openai_url}
    environ = {"OLLAMA_BASE_URL": _url(upstream), "TOKEN_DB_PATH": db_path}
    env_file = tmp_path / ".env"
    if source == ".env":
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    else:
        environ.update(values)
    settings = Settings.from_env(environ, env_file=env_file)
    assert [(u.name, u.kind) for u in settings.upstream_list] == [
        ("ollama", "ollama"),
        ("openai", "openai"),
    ]
    allowed = await make_key(db_path, "alice", "gpt", models=["gpt-4o-mini", "llama3*"])
    other_list = await make_key(db_path, "bob", "local", models=["llama3*"])
    no_list = await make_key(db_path, "carol", "any")
    admin_key = await make_key(db_path, "root", "ops", "admin")
    with caplog.at_level(logging.INFO, logger="aigateway"):
        client = await aiohttp_client(create_app(settings))

    resp = await client.post(
        "/v1/chat/completions", json=GPT, headers={"Authorization": f"Bearer {allowed}"}
    )
    assert resp.status == 200, await resp.text()
    (sent,) = [r for r in openai.requests if r.method == "POST"]
    assert sent.path_qs == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert allowed not in repr(sent.headers)
    # the Ollama beside it still serves its own models
    resp = await client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": MESSAGES, "stream": False},
        headers={"Authorization": f"Bearer {allowed}"},
    )
    assert resp.status == 200, await resp.text()
    assert _posts(fake) == ["/api/chat"]
    # keys whose allow-list does not name the model are refused, and OpenAI never asked
    for refused in (other_list, no_list):
        resp = await client.post(
            "/v1/chat/completions", json=GPT, headers={"Authorization": f"Bearer {refused}"}
        )
        assert resp.status == 403, await resp.text()
        assert (await resp.json())["error"]["reason"] == "model_not_allowed"
    assert len(_posts(openai)) == 1

    # start-up names the upstream (and warns that no price matches its models), never the key
    named = [r.getMessage() for r in caplog.records if "from OPENAI_API_KEY" in r.getMessage()]
    assert named == [
        f"upstream openai (kind openai, from OPENAI_API_KEY) at {openai_url} serves"
        " gpt-3.5*, gpt-4*, gpt-5*, o1*, o3*, o4*, chatgpt-*, text-embedding-* to keys whose"
        " allow-list names the model"
    ]
    assert "upstream openai (a openai API" in caplog.text and "no price matches" in caplog.text
    assert OPENAI_KEY not in caplog.text
    # nor does an admin's view of the upstreams, or the settings' repr
    for route in ("/health/ollama", "/admin/upstreams"):
        resp = await client.get(route, headers={"Authorization": f"Bearer {admin_key}"})
        text = await resp.text()
        assert resp.status == 200 and '"openai"' in text and OPENAI_KEY not in text, route
    assert OPENAI_KEY not in repr(settings)


async def test_anthropic_api_key_adds_anthropic_at_its_sdks_base_url(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    upstream: TestServer,
    db_path: str,
) -> None:
    anthropic = FakeOllama()
    base = _url(await aiohttp_server(anthropic.app()))
    environ = {
        "OLLAMA_BASE_URL": _url(upstream),
        "TOKEN_DB_PATH": db_path,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": base,  # as the Anthropic SDK reads it: without /v1
    }
    settings = Settings.from_env(environ, env_file=None)
    assert [u.url for u in settings.provider_upstreams] == [base + "/v1"]
    # one that ends in /v1 all the same is taken as it is
    ending = Settings.from_env({**environ, "ANTHROPIC_BASE_URL": base + "/v1/"}, env_file=None)
    assert [u.url for u in ending.provider_upstreams] == [base + "/v1"]
    allowed = await make_key(db_path, "alice", "claude", models=["claude-*"])
    other = await make_key(db_path, "bob", "local", models=["llama3*"])
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/v1/messages", json=CLAUDE, headers={"x-api-key": allowed})
    assert resp.status == 200, await resp.text()
    (sent,) = [r for r in anthropic.requests if r.method == "POST"]
    assert sent.path_qs == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and "Authorization" not in sent.headers
    resp = await client.post("/v1/messages", json=CLAUDE, headers={"x-api-key": other})
    assert resp.status == 403, await resp.text()
    assert len(_posts(anthropic)) == 1


async def test_with_upstreams_file_the_provider_settings_are_ignored_with_one_warning(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    upstream: TestServer,
    db_path: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    openai = FakeOllama()
    openai_url = _url(await aiohttp_server(openai.app())) + "/v1"
    file = tmp_path / "upstreams.toml"
    file.write_text(f'[[upstream]]\nname = "gpu1"\nurl = "{_url(upstream)}"\n')
    environ = {
        "UPSTREAMS_FILE": str(file),
        "TOKEN_DB_PATH": db_path,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_url,
        "ANTHROPIC_MODELS": "claude-3*",
    }
    settings = Settings.from_env(environ, env_file=None)
    assert [u.name for u in settings.upstream_list] == ["gpu1"]
    key = await make_key(db_path, models=["gpt-4o-mini"])
    with caplog.at_level(logging.INFO, logger="aigateway"):
        client = await aiohttp_client(
            create_app(settings), headers={"Authorization": f"Bearer {key}"}
        )
    warned = [r for r in caplog.records if "UPSTREAMS_FILE" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in warned] == [
        (
            "WARNING",
            "UPSTREAMS_FILE lists the upstreams, so OPENAI_API_KEY, OPENAI_BASE_URL,"
            " ANTHROPIC_MODELS are ignored (an entry's key_env may name such a key)",
        )
    ]
    assert OPENAI_KEY not in caplog.text
    await client.post("/v1/chat/completions", json=GPT)
    assert not openai.requests

    # a file that names the key with key_env uses it: nothing is ignored, nothing said
    file.write_text(
        f'[[upstream]]\nname = "gpu1"\nurl = "{_url(upstream)}"\n'
        f'[[upstream]]\nname = "oa"\nkind = "openai"\nurl = "{openai_url}"\n'
        'key_env = "OPENAI_API_KEY"\nmodels = ["gpt-4o*"]\n'
    )
    del environ["OPENAI_BASE_URL"], environ["ANTHROPIC_MODELS"]
    settings = Settings.from_env(environ, env_file=None)
    assert settings.ignored_provider_settings == ()
    assert [(u.name, u.key) for u in settings.upstream_list] == [("gpu1", None), ("oa", OPENAI_KEY)]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("OPENAI_API_KEY", "sk-one two", "without spaces or line breaks"),
        ("ANTHROPIC_API_KEY", "sk-ant\tx", "without spaces or line breaks"),
        ("OPENAI_MODELS", ",", "model name patterns"),
        ("ANTHROPIC_MODELS", "claude 3", "model name patterns"),
        ("OPENAI_BASE_URL", "api.openai.com/v1", "http:// or https://"),
        ("ANTHROPIC_BASE_URL", "https://user:pw@api.example", "without a user or password"),
    ],
)
def test_bad_provider_settings_name_the_variable_and_never_the_key(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value}, env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and expected in message, message
    if name.endswith("_KEY"):
        assert value not in message


def test_the_provider_settings_read_as_documented() -> None:
    settings = Settings.from_env(
        {"OPENAI_API_KEY": "k", "OPENAI_MODELS": " gpt-4o* , o3-mini ,"}, env_file=None
    )
    (openai,) = settings.provider_upstreams
    assert (openai.name, openai.kind, openai.url) == (
        "openai",
        "openai",
        "https://api.openai.com/v1",
    )
    assert openai.models == ("gpt-4o*", "o3-mini") and openai.closed
    defaults = Settings.from_env({"ANTHROPIC_API_KEY": "k"}, env_file=None)
    (claude,) = defaults.provider_upstreams
    assert (claude.url, claude.models) == ("https://api.anthropic.com/v1", ("claude-*",))
    # the default OpenAI patterns take OpenAI's families, and leave Ollama's gpt-oss alone
    openai_models = Settings().openai_models
    assert all(model_allowed(m, openai_models) for m in ("gpt-4o-mini", "o3-mini", "gpt-4.1"))
    assert not model_allowed("gpt-oss:20b", openai_models)
    assert not model_allowed("llama3.2", openai_models)
    reference = markdown_reference()
    for variable in PROVIDER_VARIABLES:
        assert f"| `{variable}` |" in reference
