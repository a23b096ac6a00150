"""Vendored third-party files are what their notes say (each note's sha256, version and
licence), and the dashboard serves its vendored files by name only: nothing else in the
folder, nothing outside it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from aigateway.ui.dashboard import VENDOR, VENDOR_DIR

from .conftest import GatewayClient

ROOT = Path(__file__).resolve().parent.parent / "aigateway"
NOTES = [VENDOR_DIR / "VENDORED.md", ROOT / "admin/docs_assets/VENDORED.md"]
# | `file` | package | version | licence | sha256 |
ROW = re.compile(r"^\| `([^`]+)` \| [^|]+ \| ([0-9][0-9.]*) \| [^|]+ \| ([0-9a-f]{64}) \|$", re.M)


def _rows(note: Path) -> list[tuple[str, str, str]]:
    return ROW.findall(note.read_text())


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.parent.name)
def test_each_vendored_file_has_the_checksum_its_note_gives(note: Path) -> None:
    rows = _rows(note)
    assert len(rows) >= 3, f"no table of files in {note}"
    for name, _version, digest in rows:
        data = (note.parent / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} is not the file {note} names"


def test_the_dashboard_vendors_only_noted_files_with_their_licence() -> None:
    noted = {name for name, _, _ in _rows(VENDOR_DIR / "VENDORED.md")}
    present = {p.name for p in VENDOR_DIR.iterdir()} - {"VENDORED.md"}
    assert present == noted == set(VENDOR)
    assert "MIT License" in (VENDOR_DIR / "uPlot.LICENSE").read_text()
    # (the size the issue allows: about 60 KB minified)
    assert (VENDOR_DIR / "uPlot.iife.min.js").stat().st_size < 60_000
    script = (VENDOR_DIR / "uPlot.iife.min.js").read_text()
    for banned in ("eval(", "new Function", "innerHTML", "insertAdjacentHTML", "cssText"):
        assert banned not in script, banned  # (what the page's policy or its rules forbid)


async def test_vendored_files_are_served_by_name_and_nothing_else(anon: GatewayClient) -> None:
    for name, kind in VENDOR.items():
        resp = await anon.get(f"/ui/static/vendor/{name}")
        assert resp.status == 200, name
        assert resp.content_type == kind
        assert await resp.read() == (VENDOR_DIR / name).read_bytes()
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path in (
        "/ui/static/vendor/VENDORED.md",  # in the folder, not served
        "/ui/static/vendor/..%2Fapp.css",
        "/ui/static/vendor/%2E%2E%2Fcore.js",
        "/ui/static/vendor/..%5Capp.css",
        "/ui/static/vendor/../../dashboard.py",
        "/ui/static/vendor%2FuPlot.min.css",
        "/ui/static/uPlot.min.css",  # vendored files only under vendor/
        "/ui/static/vendor/",
        "/ui/static/vendor/uPlot.min.css%00.js",
    ):
        resp = await anon.get(path)
        assert resp.status == 404, path
