"""run.sh checks its Python before making .venv, and makes again one made by a wrong one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_PYTHON = """#!/bin/sh
case "$1" in
  --version) echo "Python 3.9.18" ;;
  -c) exit 1 ;;
  *) exit 1 ;;
esac
"""


def _sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of run.sh, and a PATH whose only Python is an old one."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "run.sh", project / "run.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "head", "rm", "cat", "dirname"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, bin_dir / tool)
    old = bin_dir / "python3"
    old.write_text(OLD_PYTHON)
    old.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return project, env


def test_an_old_python_is_named_and_refused(tmp_path: Path) -> None:
    project, env = _sandbox(tmp_path)
    result = subprocess.run(
        ["bash", "run.sh"], cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "needs Python 3.11 or newer; found: python3 (Python 3.9.18)" in result.stderr
    assert "PYTHON=" in result.stderr
    assert not (project / ".venv").exists()


def test_a_venv_made_by_an_old_python_is_made_again(tmp_path: Path) -> None:
    project, env = _sandbox(tmp_path)
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(OLD_PYTHON)
    (venv_bin / "python").chmod(0o755)
    result = subprocess.run(
        ["bash", "run.sh"], cwd=project, env=env, capture_output=True, text=True
    )
    assert ".venv was made by Python 3.9.18, not 3.11+; making it again" in result.stderr
    assert not (project / ".venv").exists()  # removed; no Python fit to make it again
    assert result.returncode == 1


def test_the_tests_missing_tools_are_named_in_one_line_before_anything_is_made(
    tmp_path: Path,
) -> None:
    """Without Chromium and node on PATH (and no apt-get to install them, as for a user who
    is not root), `./run.sh test` stops at once: one line naming what to install and how,
    exit 1, no .venv made."""
    project, env = _sandbox(tmp_path)
    result = subprocess.run(
        ["bash", "run.sh", "test"], cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("run.sh: the tests need ")
    assert "Chromium" in line and "node" in line
    assert "apt-get install -y" in line and "chromium" in line and "nodejs npm" in line
    assert not (project / ".venv").exists()
