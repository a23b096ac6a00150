"""Migrations stay reproducible: a revision imports nothing from the package but its own
frozen copies (aigateway/db/migrations/frozen/), and a frozen copy never changes (its
checksum is written here when its revision is released)."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent.parent / "aigateway" / "db" / "migrations"
FROZEN_PACKAGE = "aigateway.db.migrations.frozen"
FROZEN = {
    "r0016_names.py": "3c574ad81977cf57c94781c917d2d5c863d726b63d9148a3ed0e7758a5363889",
}


def _package_imports(path: Path) -> list[str]:
    """The modules of aigateway a file imports (relative imports count as the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").startswith("aigateway"):
                found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("aigateway")]
    return found


def test_a_revision_imports_only_its_frozen_copies() -> None:
    revisions = sorted((MIGRATIONS / "versions").glob("r*.py"))
    assert len(revisions) >= 17
    for path in revisions:
        for module in _package_imports(path):
            assert module.startswith(FROZEN_PACKAGE + "."), f"{path.name} imports {module}"


def test_a_frozen_copy_imports_nothing_from_the_package() -> None:
    for path in (MIGRATIONS / "frozen").glob("r*.py"):
        assert _package_imports(path) == [], path.name


def test_a_frozen_copy_never_changes() -> None:
    copies = {p.name for p in (MIGRATIONS / "frozen").glob("r*.py")}
    assert copies == set(FROZEN), "add a new frozen copy's sha256 to FROZEN here"
    for name, digest in FROZEN.items():
        text = (MIGRATIONS / "frozen" / name).read_bytes()
        assert hashlib.sha256(text).hexdigest() == digest, f"{name} was edited after release"
