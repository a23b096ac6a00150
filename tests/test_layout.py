"""The house's shape, checked: no import cycle (counting imports under TYPE_CHECKING and
inside functions), at most ten modules at the top of the package, no module much over 900
lines, and a CLI that starts without loading the database or HTTP stacks. (The layers
themselves are import-linter's contract in pyproject.toml, run by ./run.sh test.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aigateway"
ROOT = PACKAGE.parent
MAX_LINES = 900
MAX_TOP_MODULES = 10
# Written once and frozen (a revision never changes after release), or vendored.
LONG_ALLOWED = ("aigateway/db/migrations/", "aigateway/testing/")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package `name` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    seen = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            # (a package's __init__ importing its own submodules is not a cycle)
            if candidate and candidate != name and not candidate.startswith(name + "."):
                seen.add(candidate)
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    """The check above can fail."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_at_most_ten_modules_at_the_top() -> None:
    top = sorted(
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )
    assert len(top) <= MAX_TOP_MODULES, top


def test_no_module_much_over_900_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
        and not str(path.relative_to(ROOT)).startswith(LONG_ALLOWED)
    }
    assert long == {}


def test_the_flag_cli_starts_without_the_database_or_http_stacks() -> None:
    """`gen_api_key_cli.py --help` loads click and the records, not SQLAlchemy, Alembic,
    asyncpg or aiohttp (about 0.8 s of imports, paid on every call before)."""
    probe = (
        "import sys, aigateway.cli.flags;"
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'asyncpg', 'aiohttp')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "[]", done.stderr
    helped = subprocess.run(
        [sys.executable, "gen_api_key_cli.py", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert helped.returncode == 0 and "--generate" in helped.stdout, helped.stderr
