"""`./run.sh bench --against REF`: the paired comparison runs both trees and prints ratios."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from aigateway.bench.paired import PYTHON, checkout, tree_env

ROOT = Path(__file__).resolve().parent.parent


def test_paired_comparison_against_head_prints_each_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aigateway.bench", "--against", "HEAD", "--rounds", "1",
         "--seconds", "0.3", "--configs", "core,billing"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for config in ("core", "billing"):
        for figure in ("throughput, 32 conns", "CPU/request, 32", "p50 latency, 1 conn"):
            line = re.compile(rf"^  {config}\s+{re.escape(figure)}\s+\d+\.\d{{3}}x", re.MULTILINE)
            assert line.search(result.stdout), result.stdout
    assert "limits" not in result.stdout.split("the median of the per-round ratios")[1]


def test_an_unknown_ref_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aigateway.bench", "--against", "no-such-ref-xyz"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "'no-such-ref-xyz' is not a commit" in result.stderr


def test_each_side_runs_its_own_tree_even_from_this_one(tmp_path: Path) -> None:
    """From this repository's root (where ./run.sh runs it), `python -m` would put the
    current folder first: REF's side must still import REF's package."""
    ref = tmp_path / "ref"
    checkout("HEAD", ref)
    result = subprocess.run(
        [*PYTHON, "-c", "import aigateway; print(aigateway.__file__)"],
        cwd=ROOT, env=tree_env(ref), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(result.stdout.strip()).is_relative_to(ref)
