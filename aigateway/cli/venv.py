"""Let `./gen_api_key_cli.py` work when started with the system Python after `./run.sh`.

Only the standard library here: this runs before the project's dependencies are known
to be importable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

NEEDED = ("click", "aiosqlite", "tabulate", "dotenv", "questionary")


def use_project_venv(script: str) -> None:
    """Re-run `script` with the project's .venv Python if this one lacks our dependencies."""
    if all(importlib.util.find_spec(name) is not None for name in NEEDED):
        return
    venv = Path(script).resolve().parent / ".venv"
    venv_python = venv / "bin" / "python"
    # Compare prefixes: the venv's python is often a symlink to this very binary.
    if venv_python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(venv_python, [str(venv_python), script, *sys.argv[1:]])
    sys.exit(f"{Path(script).name}: the dependencies are not installed; run ./run.sh once first")
