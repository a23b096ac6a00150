"""Every runnable example of the docs runs, as a reader would paste it (the rules:
tests/docs_examples.py). One test per page, each against a fresh gateway in front of the
simulated Ollama; tests/data/docs_examples.md proves the runner on every rule."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.settings import database_target, token_db_path
from aigateway.testing.fake_ollama import FakeOllama

from .docs_examples import (
    KINDS,
    ROOT,
    ExampleFailed,
    PageError,
    PageRun,
    gateway_settings,
    page_environment,
    parse_page,
    runnable_pages,
)
from .helpers import node_client_ready

# Every model the pages use; the simulated Ollama answers any other with its 404.
DOCS_MODELS = ["llama3.2", "qwen3-coder", "llama2", "nomic-embed-text", "all-minilm"]
FIXTURE_PAGE = "tests/data/docs_examples.md"


class RunPage(Protocol):
    def __call__(
        self, page: str, root: Path = ..., timeout: float | None = ...
    ) -> Awaitable[list[str]]: ...


@pytest.fixture
async def run_page(aiohttp_server: AiohttpServer, tmp_path: Path) -> AsyncIterator[RunPage]:
    """Run a page (relative to `root`, the repository's by default) against a fresh
    gateway, its own database and usage journal, in front of the simulated Ollama."""
    runs: list[PageRun] = []

    async def run(page: str, root: Path = ROOT, timeout: float | None = None) -> list[str]:
        work = tmp_path / f"page-{len(runs)}"
        work.mkdir()
        fake = FakeOllama(models=[f"{model}:latest" for model in DOCS_MODELS])
        ollama = await aiohttp_server(fake.app())
        ollama_url = str(ollama.make_url("")).rstrip("/")
        db_path = str(work / "tokens.db")
        asked = gateway_settings((root / page).read_text(), page)
        settings = {**asked, "OLLAMA_BASE_URL": ollama_url, "TOKEN_DB_PATH": db_path}
        gateway: TestServer = await aiohttp_server(create_app(Settings.from_mapping(settings)))
        env = page_environment(db_path, ollama_url, work)
        host_port = f"{gateway.host}:{gateway.port}"
        extra = {} if timeout is None else {"timeout": timeout}
        page_run = PageRun(root, page, work, env, host_port, **extra)
        runs.append(page_run)
        return await page_run.run()

    yield run
    for page_run in runs:
        await page_run.close()


@pytest.mark.parametrize("page", runnable_pages(ROOT))
async def test_the_examples_of_a_page_run(page: str, run_page: RunPage) -> None:
    left_out = await run_page(page)
    if left_out:
        pytest.skip(f"node is not installed: JavaScript blocks not run: {', '.join(left_out)}")


async def test_the_runner_keeps_every_rule_and_fails_a_failing_block(run_page: RunPage) -> None:
    """The fixture page passes every block (each checks a rule) up to its last, which fails
    the test with the page, block, line, the block as run and its output."""
    reason = node_client_ready()
    if reason:
        pytest.skip(reason)
    with pytest.raises(ExampleFailed) as failed:
        await run_page(FIXTURE_PAGE)
    report = str(failed.value)
    blocks = parse_page((ROOT / FIXTURE_PAGE).read_text(), FIXTURE_PAGE)
    last = blocks[-1]
    assert report.startswith(
        f"{FIXTURE_PAGE}: block {last.number} (sh, lines {last.line}-{last.last_line})"
        f" failed, at line {last.line + 2}: the shell exited with status 22\n"
    ), report
    assert '--- the block, as run ---\necho "asking for a model nobody has"\ncurl' in report
    assert "http://127.0.0.1:" in report and "localhost:8000" not in report
    output = report.split("--- its output ---\n", 1)[1]
    assert output.startswith("asking for a model nobody has\n"), output
    assert "model 'llama9000' not found" in output
    assert "curl: (22) The requested URL returned error: 404" in output
    assert "not reached" not in output


@pytest.mark.parametrize(
    ("block", "why"),
    [
        pytest.param(
            "```sh\ntrue\nfalse\ntrue\n```",
            "failed, at line 5: the shell exited with status 1",
            id="shell-mid-block",
        ),
        pytest.param(
            "```bash\nfalse | true\n```",
            "failed, at line 4: the shell exited with status 1",
            id="shell-pipe",
        ),
        pytest.param("```sh\nsleep 30\n```", "failed: timed out after 0.5 s", id="shell-timeout"),
        pytest.param(
            "```python\nx = 1\nraise ValueError(x)\n```",
            "failed, at line 5: it raised",
            id="python-raise",
        ),
        pytest.param(
            "```python\nimport sys\nsys.exit(3)\n```",
            "failed, at line 5: it raised",
            id="python-exit",
        ),
        pytest.param(
            "```python\nwhile True: pass\n```", "failed: timed out after 0.5 s", id="python-timeout"
        ),
        pytest.param(
            "```js\nnull.x;\n```", "failed, at line 4: node exited with status 1", id="node-throw"
        ),
    ],
)
async def test_a_failing_block_fails_its_page(
    block: str, why: str, run_page: RunPage, tmp_path: Path
) -> None:
    if "```js" in block and node_client_ready():
        pytest.skip("node is not installed")
    (tmp_path / "page.md").write_text(f"# A page\n\n{block}\n\n```sh\necho not reached\n```\n")
    with pytest.raises(ExampleFailed) as failed:
        # A short wait for the blocks that never end; the default for the others, which
        # must fail on their own, however slow the machine is to start a process.
        await run_page("page.md", tmp_path, timeout=0.5 if "timed out" in why else None)
    first = str(failed.value).splitlines()[0]
    assert first.startswith("page.md: block 1 (") and first.endswith(why), first


async def test_without_node_js_blocks_are_left_out_with_the_reason_but_fail_under_ci(
    run_page: RunPage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "node" else which(name))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="node and npm are missing under CI"):
        node_client_ready()
    monkeypatch.delenv("CI")
    (tmp_path / "page.md").write_text("# A page\n\n```js\nthrow 1;\n```\n\n```sh\ntrue\n```\n")
    assert await run_page("page.md", tmp_path) == ["page.md: block 1 (line 3)"]


def test_an_exemption_says_why_and_stands_right_before_its_fence() -> None:
    assert parse_page("<!-- not run: needs a GPU -->\n```sh\nnvidia-smi\n```\n", "p.md")[
        0
    ].not_run == ("needs a GPU")
    for page, problem in [
        ("<!-- not run: -->\n```sh\nx\n```\n", "p.md:1: '<!-- not run: reason -->' needs"),
        ("<!-- not run -->\n```sh\nx\n```\n", "p.md:1: '<!-- not run: reason -->' needs"),
        ("<!-- not run: why -->\n\n```sh\nx\n```\n", "p.md:1: a 'not run' comment must"),
        ("text\n<!-- not run: why -->\n", "p.md:2: a 'not run' comment must"),
    ]:
        with pytest.raises(PageError, match=problem):
            parse_page(page, "p.md")


def test_a_page_names_the_settings_of_its_gateway() -> None:
    page = "# A page\n<!-- test gateway: METRICS=admin CORS_ORIGINS='https://a.example' -->\n"
    assert gateway_settings(page, "p.md") == {
        "METRICS": "admin",
        "CORS_ORIGINS": "https://a.example",
    }
    with pytest.raises(PageError, match=r"p\.md:1: 'METRIX=on' is no NAME=value of a setting"):
        gateway_settings("<!-- test gateway: METRIX=on -->", "p.md")


def test_only_the_runnable_kinds_run() -> None:
    run = ("sh", "bash", "shell", "python", "js", "javascript", "mjs", "Bash")
    shown = ("console", "text", "ini", "dotenv", "yaml", "nginx", "json", "toml", "")
    page = "\n".join(f"```{info}\nx\n```" for info in (*run, *shown))
    runs = [block.info for block in parse_page(page, "p.md") if block.runs]
    assert runs == ["sh", "bash", "shell", "python", "js", "javascript", "mjs", "bash"]
    listed = "  - an item:\n\n    ```sh\n    echo in a list\n    ```\n"
    assert parse_page(listed, "p.md")[0].text == "echo in a list"


def test_pages_without_runnable_blocks_are_not_collected(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for name, text in {
        "README.md": "```sh\ntrue\n```\n",
        "docs/settings.md": "| a generated | table |\n\n```text\nno examples\n```\n",
        "docs/_snippet.md": "```sh\ntrue\n```\n",
        "docs/exempt.md": "<!-- not run: a GPU -->\n```python\nx\n```\n",
        "docs/usage.md": "```python\nx\n```\n",
    }.items():
        (tmp_path / name).write_text(text)
    assert runnable_pages(tmp_path) == ["README.md", "docs/exempt.md", "docs/usage.md"]
    assert "README.md" in runnable_pages(ROOT)


def test_a_developers_env_file_cannot_redirect_the_clis(tmp_path: Path) -> None:
    """The CLIs read the environment first, then a `.env`: the page's environment sets
    every setting, so a `.env` in the repository (or the current folder) decides none."""
    hostile = tmp_path / ".env"
    hostile.write_text(
        "DATABASE_URL=postgresql://someone:secret@db.internal/prod\n"
        "TOKEN_DB_PATH=/elsewhere/tokens.db\nOLLAMA_BASE_URL=http://gpu-box:11434\n"
    )
    env = page_environment(str(tmp_path / "test.db"), "http://127.0.0.1:9", tmp_path)
    assert database_target(env, hostile) == str(tmp_path / "test.db")
    assert token_db_path(env, hostile) == str(tmp_path / "test.db")
    assert Settings.from_env(env, hostile).ollama_base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize("page", [*runnable_pages(ROOT), FIXTURE_PAGE])
def test_no_shell_block_ends_a_pipe_with_grep_q(page: str) -> None:
    """Under `set -eo pipefail`, `... | grep -q X` fails now and then: grep stops reading at
    its first match, and the command writing into the pipe fails on the closed pipe
    (curl's status 23 on a long /metrics page). Pages filter with `grep X >/dev/null`."""
    blocks = parse_page((ROOT / page).read_text(), page)
    early = [b.number for b in blocks if KINDS.get(b.info) == "shell" and "| grep -q" in b.text]
    assert early == [], f"{page}: blocks {early} end a pipe with grep -q"
