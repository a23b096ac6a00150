"""`./run.sh demo` (python -m aigateway.demo): the real demo in its own process, its
printed keys and URLs used, its traffic in the usage, Ctrl-C leaving nothing behind and
the project's .env and database untouched; a port in use said in one line."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from aigateway.demo.run import DemoError, choose_port
from aigateway.testing.ports import free_port, refusing_port

ROOT = Path(__file__).resolve().parent.parent
READY = "The gateway's log follows"
START_BOUND_S = 30.0


class Demo:
    def __init__(self, process: subprocess.Popen[bytes], console: Path) -> None:
        self.process, self.console = process, console

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def field(self, label: str) -> str:
        """The first word after `label` on a banner line."""
        found = re.search(rf"^  {label}\s+(\S+)", self.text(), re.MULTILINE)
        assert found, self.text()
        return found[1]

    def exports(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in self.text().splitlines():
            if line.strip().startswith("export "):
                for word in shlex.split(line)[1:]:
                    name, _, value = word.partition("=")
                    values[name] = value
        return values


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a real .env and key database the demo must not touch."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / ".env").write_text("TOKEN_DB_PATH=tokens.db\nPORT=1\nLOG_LEVEL=DEBUG\n")
    (folder / "tokens.db").write_bytes(b"not touched by the demo")
    return folder


@pytest.fixture
async def demo(project: Path, tmp_path: Path) -> AsyncIterator[Demo]:
    temp = tmp_path / "tmp"  # the demo's throw-away folder goes in here (TMPDIR)
    temp.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
        "TMPDIR": str(temp),
        # Settings of the real gateway in this shell: the demo's gateway ignores them.
        "DATABASE_URL": f"sqlite:///{project / 'tokens.db'}",
        "PORT": "1",
    }
    console = tmp_path / "demo.out"
    with console.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aigateway.demo", "--port", str(free_port())],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group, as a terminal's: Ctrl-C reaches every process
        )
    try:
        yield Demo(process, console)
    finally:
        if process.poll() is None:  # a failed test leaves neither the demo nor its gateway
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _unchanged(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


async def test_the_demo_serves_its_keys_and_ctrl_c_leaves_nothing_behind(
    demo: Demo, project: Path, tmp_path: Path
) -> None:
    before = {name: _unchanged(project / name) for name in (".env", "tokens.db")}
    started = time.monotonic()
    while READY not in demo.text():
        assert demo.process.poll() is None, demo.text()
        assert time.monotonic() - started < START_BOUND_S, demo.text()
        await asyncio.sleep(0.05)
    output = demo.text()
    assert "throw-away" in output and "Traceback" not in output, output
    dashboard, swagger, api = demo.field("Dashboard"), demo.field("Swagger"), demo.field("API base")
    admin, user = demo.field("Admin key"), demo.field("User key")
    base = api.removesuffix("/api")
    assert dashboard == base + "/ui/" and swagger == base + "/docs", output
    (folder,) = (tmp_path / "tmp").iterdir()
    assert str(folder) in output

    async with aiohttp.ClientSession() as session:
        chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(
            api + "/chat",
            data=orjson.dumps({**chat, "stream": False}),
            headers={"Authorization": f"Bearer {user}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert "simulated Ollama" in (await resp.json())["message"]["content"]
        async with session.get(dashboard) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
        async with session.get(swagger) as resp:
            assert resp.status == 200

        async def used_models() -> set[str]:
            async with session.get(
                base + "/admin/usage", headers={"Authorization": f"Bearer {admin}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                records = (await resp.json())["records"]
            return {f"{r['user']} {r['route']} {r['model']} {r['status']}" for r in records}

        wanted = {  # (a record's route is the path below /api or /v1)
            "alice /chat llama3.2:latest 200",
            "alice /chat gemma3:latest 200",  # the stream
            "alice /chat/completions qwen3-coder:latest 200",
            "alice /embed nomic-embed-text:latest 200",
            "bob /chat llama3.2:latest 200",
        }
        seen: set[str] = set()

        async def recorded() -> bool:
            seen.update(await used_models())
            return wanted <= seen

        deadline = time.monotonic() + 10
        while not await recorded():
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)

    # The gateway's log follows the banner: its start-up line, and the traffic's refusal.
    log = demo.text().partition(READY)[2]
    assert f"; dashboard {dashboard}; API docs {swagger}" in log, log
    assert re.search(r" user=bob key=phone .* status=403 .* reason=model_not_allowed ", log), log

    # The export block points the CLIs at the demo's database, over the project's .env.
    exports = demo.exports()
    assert exports["KEY"] == user and exports["ADMIN_KEY"] == exports["ADMIN"] == admin
    listed = subprocess.run(
        [sys.executable, "-m", "aigateway.cli.flags", "-l", "--format", "json"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT), **exports},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    keys = {(k["user"], k["key_name"], k["role"]) for k in orjson.loads(listed.stdout)}
    assert ("alice", "laptop", "user") in keys and ("admin", "demo", "admin") in keys, keys

    # Ctrl-C in a terminal: SIGINT to the demo and its gateway together.
    os.killpg(demo.process.pid, signal.SIGINT)
    await asyncio.to_thread(demo.process.wait, 30)
    output = demo.text()
    assert demo.process.returncode == 0, output
    assert "Traceback" not in output, output
    assert not folder.exists()
    for url in (base, exports["OLLAMA_BASE_URL"]):  # neither the gateway nor the fake answers
        host, port = url.removeprefix("http://").split(":")
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port))):
            pass
    assert {name: _unchanged(project / name) for name in (".env", "tokens.db")} == before


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with refusing_port() as port:  # (bound: taken)
        result = subprocess.run(
            [sys.executable, "-m", "aigateway.demo", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"aigateway demo: port {port} is in use: choose another with --port\n"
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_a_missing_dependency_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "aiohttp"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'aiohttp'\", name='aiohttp')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "aigateway.demo"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "aigateway demo: the Python package 'aiohttp' is missing: start the demo with"
        " ./run.sh demo, which installs what the gateway needs\n"
    )


def test_the_default_port_when_free_else_another() -> None:
    with refusing_port() as taken:
        other = choose_port(None, default=taken)
        with pytest.raises(DemoError, match=f"port {taken} is in use"):
            choose_port(taken)
    assert other != taken
    free = free_port()
    assert choose_port(None, default=free) == free
