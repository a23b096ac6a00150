"""Run the examples of a docs page, as a reader would paste them (tests/test_docs_examples.py).

The rules, which the page writers follow:

- Fenced blocks whose info string starts with `sh`, `bash` or `shell` run in ONE bash
  session per page, in page order: the folder, variables and exports carry from block to
  block. The session runs with `set -eo pipefail`, so a block fails at its first failing
  command (in a pipe too), and curl reads a `.curlrc` saying `--fail-with-body
  --show-error`, so an HTTP error (a 401, a 404) fails the block and still shows the body.
- `python` blocks run in ONE Python interpreter per page (tests/docs_python.py), sharing
  one namespace, interleaved with the shell blocks; each sees the environment the shell
  has exported so far, in the shell's current folder.
- `js`, `javascript` and `mjs` blocks run each on its own, by node, as an ES module, in a
  folder whose `node_modules` is tests/node's (`import { Ollama } from "ollama"`), with
  the same environment and folder.
- Any other fence (`console`, `text`, `ini`, `json`, none, ...) is not run.
- `<!-- not run: reason -->` on the line right before a fence exempts its block; the reason
  may not be empty, and the comment may stand nowhere else.
- `localhost:8000` and `127.0.0.1:8000` in a block become the test gateway's host:port;
  nothing else is added: variables such as `$KEY` come from the page's own blocks.
- The gateway runs with the default settings, but for those a page names on a line of its
  own, `<!-- test gateway: METRICS=admin BASE_PATH=/ollama/api -->` (an example of a
  setting the reader has just been told to put in `.env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aigateway.settings import declarations

from .helpers import node_client_ready

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
PYTHON_SESSION = Path(__file__).with_name("docs_python.py")
BLOCK_TIMEOUT = 60.0

KINDS = {
    **dict.fromkeys(("sh", "bash", "shell"), "shell"),
    "python": "python",
    **dict.fromkeys(("js", "javascript", "mjs"), "node"),
}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run\b(?P<rest>.*?)-->\s*$")
GATEWAY_SETTINGS = re.compile(r"^\s*<!--\s*test gateway:(?P<settings>.*?)-->\s*$")
GATEWAY_HOST = re.compile(r"(?<![\w.-])(?:localhost|127\.0\.0\.1):8000(?!\d)")
# What a page's blocks inherit from the test's own environment: what finds programs, the
# user and the language. Nothing else, so that a variable a developer happens to have
# exported (KEY, OLLAMA_HOST, OPENAI_API_KEY) cannot make a page pass on one machine only.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
INHERITED_TOO = ("PYTHONPATH", "CI")
OUTPUT_SHOWN = 8000  # characters of a failed block's output in the report


class PageError(Exception):
    """A page that breaks the rules themselves (an exemption without a reason)."""


class ExampleFailed(AssertionError):
    """A block that failed, reported with its page, number, lines, text and output."""


@dataclass(frozen=True)
class Block:
    number: int  # among the page's fenced blocks, from 1
    line: int  # the line of its opening fence, from 1
    info: str  # the first word of the info string, lowercased
    text: str
    not_run: str | None  # the reason it is exempt, if it is

    @property
    def kind(self) -> str | None:
        """How it runs ("shell", "python", "node"), or None: a fence that never runs."""
        return KINDS.get(self.info)

    @property
    def runs(self) -> bool:
        return self.kind is not None and self.not_run is None

    @property
    def last_line(self) -> int:
        return self.line + self.text.count("\n") + 1


def parse_page(text: str, page: str) -> list[Block]:
    """Every fenced block of a Markdown page, in order; PageError for a `not run` comment
    with no reason, or one that is not right before a fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    exempt: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        comment = NOT_RUN.match(line)
        opening = FENCE.match(line)
        if opening and opening["fence"][0] == "`" and "`" in opening["info"]:
            opening = None  # inline code, not a fence
        if exempt is not None and opening is None:
            problems.append(f"{page}:{index}: a 'not run' comment must be right before a fence")
            exempt = None
        if comment:
            reason = comment["rest"].strip()
            if not reason.startswith(":") or not reason[1:].strip():
                problems.append(f"{page}:{index + 1}: '<!-- not run: reason -->' needs a reason")
            exempt = reason[1:].strip() if reason.startswith(":") else ""
            index += 1
            continue
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [_dedent(each, indent) for each in lines[index + 1 : end]]
        info = opening["info"].strip().split(maxsplit=1)
        blocks.append(
            Block(
                number=len(blocks) + 1,
                line=index + 1,
                info=info[0].lower() if info else "",
                text="\n".join(body),
                not_run=exempt,
            )
        )
        exempt = None
        index = end + 1
    if exempt is not None:
        problems.append(f"{page}:{len(lines)}: a 'not run' comment must be right before a fence")
    if problems:
        raise PageError("\n".join(problems))
    return blocks


def _dedent(line: str, indent: int) -> str:
    """A line of a fenced block without the fence's own indentation (in a list item)."""
    taken = len(line) - len(line.lstrip(" \t"))
    return line[min(taken, indent) :]


def runnable_pages(root: Path) -> list[str]:
    """README.md and docs/*.md (not those starting with `_`) that hold a block of a
    runnable kind (run or exempt), relative to `root`."""
    found = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    pages = []
    for path in found:
        if path.is_file() and not path.name.startswith("_"):
            text = path.read_text()
            with contextlib.suppress(PageError):
                if not any(b.kind for b in parse_page(text, path.name)):
                    continue
            pages.append(path.relative_to(root).as_posix())
    return pages


def gateway_settings(text: str, page: str) -> dict[str, str]:
    """The settings a page asks its gateway for (`<!-- test gateway: NAME=value ... -->`)."""
    known = {declared.variable for declared in declarations()}
    asked: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        found = GATEWAY_SETTINGS.match(line)
        for each in shlex.split(found["settings"]) if found else ():
            name, equals, value = each.partition("=")
            if not equals or name not in known:
                raise PageError(f"{page}:{number}: {each!r} is no NAME=value of a setting")
            asked[name] = value
    return asked


def with_gateway(text: str, host_port: str) -> str:
    """The block as run: the documented gateway address replaced by the test's."""
    return GATEWAY_HOST.sub(host_port, text)


def page_environment(db_path: str, ollama_url: str, work: Path) -> dict[str, str]:
    """The environment of a page's first block: the test's database and Ollama for the
    CLIs, whatever the developer's own `.env` or shell says."""
    env = {name: os.environ[name] for name in INHERITED + INHERITED_TOO if name in os.environ}
    # The test's Python first on PATH: `python3`, and the CLIs' `#!/usr/bin/env python3`.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    # The settings are read from the environment, then a `.env` (in the current folder,
    # else the project's: settings.find_env_file, which nothing redirects). Every setting
    # given here, empty when it is the default, leaves nothing for a `.env` to decide.
    for declared in declarations():
        env[declared.variable] = ""
    env["TOKEN_DB_PATH"] = db_path
    env["OLLAMA_BASE_URL"] = ollama_url
    # curl reads $CURL_HOME/.curlrc first: HTTP errors fail the block (the body and
    # curl's error shown, even under -s; no progress meter in the output), and a
    # developer's own ~/.curlrc changes nothing.
    (work / ".curlrc").write_text("--fail-with-body\n--show-error\n--no-progress-meter\n")
    env["CURL_HOME"] = str(work)
    return env


@dataclass
class Outcome:
    ok: bool
    output: str
    why: str = ""  # what went wrong, when not ok
    line: int | None = None  # the page's line where it went wrong, when known


class PageRun:
    """One page's sessions: the bash session, the Python interpreter, node per block."""

    def __init__(
        self,
        root: Path,
        page: str,
        work: Path,
        env: dict[str, str],
        host_port: str,
        timeout: float = BLOCK_TIMEOUT,
    ) -> None:
        self.root, self.page, self.work, self.timeout = root, page, work, timeout
        self.host_port = host_port
        self.env = dict(env)  # what the shell has exported so far
        self.cwd = str(root)  # and its current folder
        self.notes: list[str] = []  # blocks not run, and why (node missing)
        self._shell: asyncio.subprocess.Process | None = None
        self._python: asyncio.subprocess.Process | None = None
        self._node_missing: str | None = None
        self._node_checked = False
        self._logs: list[BinaryIO] = []  # the sessions' output files, closed at the end

    async def run(self) -> list[str]:
        """Run every runnable block; ExampleFailed at the first that fails. Returns the
        notes of blocks left out (no node here)."""
        text = (self.root / self.page).read_text()
        for block in parse_page(text, self.page):
            if not block.runs:
                continue
            code = with_gateway(block.text, self.host_port)
            if block.kind == "shell":
                outcome = await self._run_shell(block, code)
            elif block.kind == "python":
                outcome = await self._run_python(block, code)
            else:
                if await self._node_unavailable():
                    self.notes.append(f"{self.page}: block {block.number} (line {block.line})")
                    continue
                outcome = await self._run_node(block, code)
            if not outcome.ok:
                raise ExampleFailed(self._report(block, code, outcome))
        return self.notes

    def _report(self, block: Block, code: str, outcome: Outcome) -> str:
        where = f", at line {outcome.line}" if outcome.line else ""
        output = outcome.output
        if len(output) > OUTPUT_SHOWN:
            output = "[...]\n" + output[-OUTPUT_SHOWN:]
        return (
            f"{self.page}: block {block.number} ({block.info}, lines {block.line}-"
            f"{block.last_line}) failed{where}: {outcome.why}\n"
            f"--- the block, as run ---\n{code}\n"
            f"--- its output ---\n{output}"
        )

    def _file(self, name: str) -> Path:
        return self.work / name

    def _log(self, path: Path) -> BinaryIO:
        file = path.open("ab")
        self._logs.append(file)
        return file

    # --- the shell ------------------------------------------------------------------------

    async def _run_shell(self, block: Block, code: str) -> Outcome:
        log = self._file("shell.log")
        if self._shell is None:
            self._shell = await asyncio.create_subprocess_exec(
                "bash",
                "--noprofile",
                "--norc",
                stdin=asyncio.subprocess.PIPE,
                stdout=self._log(log),
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # one process group: ended whole, children too
            )
            failed = shlex.quote(str(self._file("failed-line")))
            self._send(f"set -eo pipefail\ntrap 'echo $LINENO > {failed}' ERR\n")
        n = block.number
        script, env, cwd, done = (
            self._file(f"block-{n}.sh"),
            self._file(f"env-{n}"),
            self._file(f"cwd-{n}"),
            self._file(f"done-{n}"),
        )
        # Blank lines first: bash's "line N" is the page's line N.
        script.write_text("\n" * block.line + code + "\n")
        self._file("failed-line").unlink(missing_ok=True)
        start = log.stat().st_size
        q = shlex.quote
        # stdin from /dev/null: a command that reads stdin gets nothing, not the session's
        # next commands (nor waits for them until the timeout).
        self._send(
            f"source {q(str(script))} </dev/null\n"
            f"{q(_program('env'))} -0 > {q(str(env))}; pwd > {q(str(cwd))}; : > {q(str(done))}\n"
        )
        why = await self._wait(done, self._shell)
        output = _read_from(log, start)
        if why is not None:
            line = self._file("failed-line")
            return Outcome(False, output, why, _int(line.read_text()) if line.exists() else None)
        self.env = _exported(env.read_text())
        self.cwd = cwd.read_text().rstrip("\n")
        return Outcome(True, output)

    def _send(self, text: str) -> None:
        assert self._shell is not None and self._shell.stdin is not None
        self._shell.stdin.write(text.encode())

    # --- Python ---------------------------------------------------------------------------

    async def _run_python(self, block: Block, code: str) -> Outcome:
        log = self._file("python.log")
        if self._python is None:
            self._python = await asyncio.create_subprocess_exec(
                sys.executable,
                "-u",
                str(PYTHON_SESSION),
                stdin=asyncio.subprocess.PIPE,
                stdout=self._log(log),
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        n = block.number
        source, request, outcome = (
            self._file(f"block-{n}.py"),
            self._file(f"request-{n}.json"),
            self._file(f"outcome-{n}.json"),
        )
        source.write_text("\n" * block.line + code + "\n")
        request.write_text(
            json.dumps(
                {
                    "code": str(source),
                    "page": self.page,
                    "env": self.env,
                    "cwd": self.cwd,
                    "outcome": str(outcome),
                }
            )
        )
        start = log.stat().st_size
        assert self._python.stdin is not None
        self._python.stdin.write(f"{request}\n".encode())
        why = await self._wait(outcome, self._python, "the Python session")
        output = _read_from(log, start)
        if why is not None:
            return Outcome(False, output, why)
        result = json.loads(outcome.read_text())
        if not result["ok"]:
            return Outcome(False, output, "it raised", result["line"])
        return Outcome(True, output)

    # --- node -----------------------------------------------------------------------------

    async def _node_unavailable(self) -> bool:
        """Whether node blocks cannot run here (then noted; under CI=true, a failure)."""
        if not self._node_checked:
            self._node_checked = True
            self._node_missing = await asyncio.to_thread(node_client_ready)
        return self._node_missing is not None

    async def _run_node(self, block: Block, code: str) -> Outcome:
        folder = self._file("node")
        if not folder.exists():
            folder.mkdir()
            (folder / "node_modules").symlink_to(NODE_DIR / "node_modules")
        module = folder / f"block-{block.number}.mjs"
        module.write_text("\n" * block.line + code + "\n")
        process = await asyncio.create_subprocess_exec(
            "node",
            str(module),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            _end(process)
            await process.wait()
            return Outcome(False, "", f"timed out after {self.timeout:g} s")
        output = out.decode(errors="replace")
        if process.returncode != 0:
            found = re.search(rf"{re.escape(module.name)}:(\d+)", output)
            line = int(found[1]) if found else None
            return Outcome(False, output, f"node exited with status {process.returncode}", line)
        return Outcome(True, output)

    # --- waiting and ending ---------------------------------------------------------------

    async def _wait(
        self, done: Path, process: asyncio.subprocess.Process, name: str = "the shell"
    ) -> str | None:
        """Wait until `done` exists; else why not: the process ended, or time ran out."""
        deadline = time.monotonic() + self.timeout
        while not done.exists():
            if process.returncode is not None:
                return f"{name} exited with status {process.returncode}"
            if time.monotonic() > deadline:
                _end(process)
                await process.wait()
                return f"timed out after {self.timeout:g} s"
            await asyncio.sleep(0.02)
        return None

    async def close(self) -> None:
        """End both sessions and whatever they started (servers sent to the background)."""
        for process in (self._shell, self._python):
            if process is None:
                continue
            if process.stdin is not None:
                process.stdin.close()
            _end(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                _end(process)
                await process.wait()
            _end(process)  # what it left in its group
        for file in self._logs:
            file.close()


def _end(process: asyncio.subprocess.Process, how: signal.Signals = signal.SIGKILL) -> None:
    """Signal the process's whole group (its own: start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, how)


def _program(name: str) -> str:
    """A program's full path, found once: a block that changes PATH cannot hide it."""
    found = shutil.which(name)
    assert found is not None, f"{name} is not installed"
    return found


def _read_from(path: Path, start: int) -> str:
    with path.open("rb") as file:
        file.seek(start)
        return file.read().decode(errors="replace")


def _exported(listing: str) -> dict[str, str]:
    """The variables of `env -0`'s listing."""
    pairs = (each.partition("=") for each in listing.split("\0") if "=" in each)
    return {name: value for name, _, value in pairs}


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None
