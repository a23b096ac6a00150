"""Exports stream: a dozen of 100,000 records at once cost the gateway little memory and
never stall it, a key runs at most two at once, and one cut midway is seen as cut (the
API's transfer and the CLI's file), never as a file that looks complete."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from click.testing import CliRunner
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.admin.exports import EXPORT_RETRY_AFTER_S
from aigateway.cli.admin import write_usage_export
from aigateway.cli.flags import cli
from aigateway.db.store import Store
from aigateway.errors import Refused
from aigateway.records import UsageQuery, UsageRecord

from .test_server_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 100_000
EXPORTERS = 6  # admin keys, two exports each: twelve at once
T0 = 1_790_000_000.0


@dataclass(frozen=True)
class BigDatabase:
    path: Path
    admins: list[str]  # admin keys' secrets
    admin_ids: list[int]


def _record(n: int, key_id: int) -> UsageRecord:
    return UsageRecord(
        T0 + n * 0.5, key_id, "alice", "laptop", "POST", "/api/chat", "llama3.2:latest", 200,
        20 + n % 7, 100 + n % 13, 812.25, 31.5, 120, 2048, n % 50 == 0, False, 1500,
        700_000_000, "llama3.2",
    )  # fmt: skip


async def _seed(path: Path) -> BigDatabase:
    store = await Store.open(str(path))
    try:
        made = [await store.create_key("root", f"ops{n}", "admin") for n in range(EXPORTERS)]
        user_id = (await store.create_key("alice", "laptop"))[0].id
        batch = 10_000
        for start in range(0, RECORDS, batch):
            await store.insert_usage([_record(n, user_id) for n in range(start, start + batch)])
    finally:
        await store.close()
    return BigDatabase(path, [secret for _, secret in made], [record.id for record, _ in made])


@pytest.fixture(scope="module")
def big_template(tmp_path_factory: pytest.TempPathFactory) -> BigDatabase:
    """One SQLite file with 100,000 usage records, made once for the module."""
    return asyncio.run(_seed(tmp_path_factory.mktemp("big") / "tokens.db"))


@pytest.fixture
def big(big_template: BigDatabase, tmp_path: Path) -> BigDatabase:
    """A copy of it for one test (a test may break its copy)."""
    path = tmp_path / "tokens.db"
    shutil.copy(big_template.path, path)
    return BigDatabase(path, big_template.admins, big_template.admin_ids)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _curl(url: str, key: str) -> asyncio.subprocess.Process:
    """A download by another process (so that reading twelve does not slow this test's
    own clock); it prints the status and the size it got, and exits non-zero for a
    transfer cut short."""
    return await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
        "-H", f"Authorization: Bearer {key}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_twelve_exports_of_100k_records_keep_rss_and_health(
    upstream: TestServer, big: BigDatabase, tmp_path: Path
) -> None:
    gateway = await start_gateway(upstream, str(big.path), tmp_path)
    try:
        pid = gateway.process.pid
        async with aiohttp.ClientSession() as session:
            # Warm: the admin API, the store and the first pages have been used once.
            headers = {"Authorization": f"Bearer {big.admins[0]}"}
            async with session.get(gateway.url + "/admin/usage?limit=5", headers=headers) as r:
                assert r.status == 200
            await asyncio.sleep(0.5)
            before = _rss_kib(pid)
            curls = [
                await _curl(
                    f"{gateway.url}/admin/usage?format={'csv' if n % 2 else 'json'}",
                    big.admins[n // 2],
                )
                for n in range(2 * EXPORTERS)
            ]
            downloads = [asyncio.create_task(c.communicate()) for c in curls]
            peak, took = before, list[float]()
            last_probe, deadline = 0.0, time.monotonic() + 300
            while not all(d.done() for d in downloads):
                assert time.monotonic() < deadline, "the exports did not end"
                peak = max(peak, _rss_kib(pid))
                if time.monotonic() - last_probe > 0.05:
                    started = time.monotonic()
                    async with session.get(gateway.url + "/health") as r:
                        assert r.status == 200
                        await r.read()
                    last_probe = time.monotonic()
                    took.append(last_probe - started)
                await asyncio.sleep(0.01)
    finally:
        gateway.process.kill()
        gateway.process.wait()
    rise_mb = (peak - before) / 1024
    assert rise_mb <= 64, f"RSS rose by {rise_mb:.0f} MB ({before // 1024} to {peak // 1024})"
    assert len(took) >= 5, took  # /health was asked while the exports ran
    took.sort()
    shown = f"median {took[len(took) // 2] * 1000:.0f} ms of {len(took)}"
    assert took[-1] < 0.1, f"/health took {took[-1] * 1000:.0f} ms during the exports ({shown})"
    for n, (curl, download) in enumerate(zip(curls, downloads, strict=True)):
        out, err = download.result()
        status, size = out.decode().split()
        assert curl.returncode == 0 and status == "200", (n, curl.returncode, out, err)
        assert int(size) > RECORDS * 100, (n, size)  # every record came


@pytest.fixture
async def big_gateway(
    aiohttp_server: AiohttpServer, upstream: TestServer, big: BigDatabase
) -> TestServer:
    settings = Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"), token_db_path=str(big.path)
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


def _export_url(server: TestServer, fmt: str = "csv", query: str = "") -> str:
    return str(server.make_url(f"/admin/usage?format={fmt}{query}"))


async def _held_open(
    session: aiohttp.ClientSession, url: str, within: float = 0
) -> aiohttp.ClientResponse:
    """A download of 100,000 records started and not read: it waits on its client.
    Refused for `within` seconds at most (a slot on its way back)."""
    deadline = time.monotonic() + within
    while (resp := await session.get(url)).status == 429 and time.monotonic() < deadline:
        resp.close()
        await asyncio.sleep(0.02)
    assert resp.status == 200, await resp.text()
    return resp


async def _refused(session: aiohttp.ClientSession, url: str) -> None:
    resp = await session.get(url)
    assert resp.status == 429, resp.status
    assert int(resp.headers["Retry-After"]) == EXPORT_RETRY_AFTER_S
    body = await resp.json()
    assert body["reason"] == Refused.EXPORT_LIMIT and "at most 2" in body["error"], body


async def _admitted_within(session: aiohttp.ClientSession, url: str, seconds: float) -> str:
    """The body of the first download of `url` not refused (a quick one: filtered)."""
    deadline = time.monotonic() + seconds
    while True:
        async with session.get(url) as resp:
            if resp.status != 429:
                assert resp.status == 200, resp.status
                return await resp.text()
        assert time.monotonic() < deadline, "the key's slot was not given back"
        await asyncio.sleep(0.02)


async def test_a_key_runs_at_most_two_exports_and_gets_them_back(
    big_gateway: TestServer, big: BigDatabase
) -> None:
    url, nobody = _export_url(big_gateway), _export_url(big_gateway, query="&user=nobody")
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {big.admins[0]}"}) as mine,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {big.admins[1]}"}) as theirs,
    ):
        first = await _held_open(mine, url)
        second = await _held_open(mine, _export_url(big_gateway, "json"))
        await _refused(mine, url)
        await _refused(mine, nobody)  # however small
        # Another key is not held back by this one's.
        async with theirs.get(nobody) as resp:
            assert resp.status == 200 and await resp.text() == _header()
        # A client that goes away gives its slot back...
        first.close()
        assert await _admitted_within(mine, nobody, 5) == _header()
        # ...and so does a download read to its end.
        assert len(json.loads(await second.read())) == RECORDS
        both = [await _held_open(mine, url), await _held_open(mine, url)]
        await _refused(mine, url)
        for resp in both:
            resp.close()


def _header() -> str:
    return "time,ts," + ",".join(UsageRecord._fields[1:]) + "\n"


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_an_export_cut_by_the_database_is_a_broken_transfer(
    big_gateway: TestServer, big: BigDatabase, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sees an error, never a file that ends well; the slot comes back."""
    headers = {"Authorization": f"Bearer {big.admins[0]}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(_export_url(big_gateway, fmt)) as resp:
            assert resp.status == 200
            start = await resp.content.readexactly(64 * 1024)
            # The database fails while the rest is still to come.
            await _rename_table(big.path, "usage", "usage_gone")
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            assert resp.headers["Transfer-Encoding"] == "chunked"
        assert start.startswith(b"time,ts," if fmt == "csv" else b"[")
        assert "usage export cut after" in caplog.text and "no such table" in caplog.text
        assert "Traceback" not in caplog.text and "unhandled" not in caplog.text
        await _rename_table(big.path, "usage_gone", "usage")
        # Both of the key's slots are free again.
        held = [await _held_open(session, _export_url(big_gateway), within=5) for _ in "ab"]
        for resp in held:
            resp.close()


async def _rename_table(path: Path, old: str, new: str) -> None:
    """Rename a table from another connection, in a thread: the gateway in this event
    loop may hold the write lock a moment, and must be free to finish and let it go
    (a blocking call here waited out its own timeout against it)."""

    def rename() -> None:
        with closing(sqlite3.connect(path, timeout=10)) as db:
            db.execute(f"ALTER TABLE {old} RENAME TO {new}")
            db.commit()

    await asyncio.to_thread(rename)


async def test_the_cli_export_cut_midway_leaves_no_file(big: BigDatabase, tmp_path: Path) -> None:
    """The CLI's `--usage-export`: exit 1 with one line, and no file that looks whole;
    the file `--force` was to replace stays as it was."""
    target = tmp_path / "usage.csv"
    target.write_text("the old export\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "gen_api_key_cli.py"),
        "--usage-export", str(target), "--force", "--db", str(big.path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Once it has written some rows (or finished: then it was not cut, and fails below),
    # the database fails.
    deadline = time.monotonic() + 30
    while not [p for p in tmp_path.glob(".usage.csv.*") if p.stat().st_size > 0]:
        if process.returncode is not None or target.read_text() != "the old export\n":
            break
        assert time.monotonic() < deadline, "the export wrote nothing"
        await asyncio.sleep(0.002)
    await _rename_table(big.path, "usage", "usage_gone")
    _, err = await process.communicate()
    lines = err.decode().strip().splitlines()
    assert process.returncode == 1, (process.returncode, err)
    assert len(lines) == 1 and "usage" in lines[0] and "Traceback" not in lines[0], lines
    assert target.read_text() == "the old export\n"
    assert [p.name for p in tmp_path.iterdir() if "usage" in p.name] == ["usage.csv"]


# What a spreadsheet may run as a formula, and so what no CSV cell we write starts with
# unquoted (docs/security.md).
FORMULA_STARTS = {
    "equals": "=", "plus": "+", "minus": "-", "at": "@", "tab": "\t", "cr": "\r", "lf": "\n",
    "fullwidth-equals": "\uff1d", "fullwidth-plus": "\uff0b", "fullwidth-minus": "\uff0d",
    "fullwidth-at": "\uff20",
}  # fmt: skip
# The text cells of a usage record, and the word each carries after its first character.
_CHOSEN = {
    "user": "user", "key_name": "key", "route": "route", "model": "model", "model_sent": "sent",
}  # fmt: skip


def _formula_record(start: str, key_id: int = 1) -> UsageRecord:
    """A record whose every text cell a client or an admin chose begins with `start`."""
    return UsageRecord(
        T0, key_id, f"{start}cell-user", f"{start}cell-key", "POST", f"{start}cell-route",
        f"{start}cell-model", 200, 3, 4, 10.0, 1.0, 5, 6, False, False, 0, None,
        f"{start}cell-sent",
    )  # fmt: skip


async def _insert(db_path: str, records: list[UsageRecord]) -> None:
    store = await Store.open(db_path)
    try:
        await store.insert_usage(records)
    finally:
        await store.close()


def _marked_cells(text: str) -> list[str]:
    """Every CSV cell holding one of the chosen values."""
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row if "cell-" in cell]


@pytest.mark.parametrize("start", FORMULA_STARTS.values(), ids=FORMULA_STARTS.keys())
async def test_api_csv_export_neutralises_a_cell_starting_with(
    admin: TestClient[Request, None], db_path: str, start: str
) -> None:
    await _insert(db_path, [_formula_record(start)])
    text = await (await admin.get("/admin/usage?format=csv")).text()
    (row,) = [r for r in csv.DictReader(io.StringIO(text)) if "cell-" in r["route"]]
    for field, chosen in _CHOSEN.items():
        assert row[field] == f"'{start}cell-{chosen}", (field, row[field])
    assert row["method"] == "POST" and row["status"] == "200"  # the rest as it was
    # JSON is read by programs, not spreadsheets: its values stay as they were.
    listed = await (await admin.get("/admin/usage?format=json")).json()
    (record,) = [r for r in listed if "cell-" in r["route"]]
    assert record["model"] == f"{start}cell-model"


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("start", FORMULA_STARTS.values(), ids=FORMULA_STARTS.keys())
def test_cli_csv_files_neutralise_a_cell_starting_with(
    db_path: str, tmp_path: Path, start: str
) -> None:
    """Every CSV the CLIs write: `--usage-export`, `--usage --by ... --format csv`, and,
    where a name may start so (printable), `-l --format csv`, `-e` and `--users`."""

    async def seed() -> None:
        store = await Store.open(db_path, create=True)
        try:
            if start.isprintable():
                await store.create_user(f"{start}cell-owner", note=f"{start}cell-note")
                await store.create_key(f"{start}cell-owner", f"{start}cell-laptop")
            await store.insert_usage([_formula_record(start)])
        finally:
            await store.close()

    asyncio.run(seed())
    export, keys = tmp_path / "usage.csv", tmp_path / "keys.csv"
    assert _cli("--usage-export", str(export), "--db", db_path)[0] == 0
    outputs = {
        "--usage-export": export.read_bytes().decode(),
        **{
            f"--usage --by {by}": _cli("--usage", "--by", by, "--format", "csv", "--db", db_path)[1]
            for by in ("key", "model", "route")
        },
    }
    if start.isprintable():
        assert _cli("-e", str(keys), "--db", db_path)[0] == 0
        outputs["-e"] = keys.read_bytes().decode()
        outputs["-l"] = _cli("-l", "--format", "csv", "--db", db_path)[1]
        outputs["--users"] = _cli("--users", "--format", "csv", "--db", db_path)[1]
    for name, text in outputs.items():
        cells = _marked_cells(text)
        assert cells, (name, text)
        for cell in cells:
            assert cell.startswith("'" + start), (name, cell)
            assert cell[2:].startswith("cell-"), (name, cell)  # and nothing else changed


async def test_exports_page_through_equal_times_on_both_databases(
    database: str, aiohttp_server: AiohttpServer, upstream: TestServer, tmp_path: Path
) -> None:
    """Pages follow (time, id): records of one time across a page boundary are neither
    lost nor repeated, newest first from the API, oldest first from the CLI. (`database`
    first: its PostgreSQL database is dropped only after the gateway has stopped.)"""
    store = await Store.open(database)
    try:
        admin, secret = await store.create_key("root", "ops", "admin")
        # Over two pages of 500 (db/reports.py USAGE_CHUNK); times repeat seven at a time, so
        # records of one time straddle each page boundary.
        count = 1203
        await store.insert_usage(
            [
                _record(n, admin.id)._replace(
                    user="ben" if n % 2 else "ann", route=f"/r{n}", ts=T0 + n // 7
                )
                for n in range(count)
            ]
        )
        pages = store.usage_chunks(UsageQuery(), newest_first=True, most=503, chunk=100)
        assert [len(page) async for page in pages] == [100, 100, 100, 100, 100, 3]
    finally:
        await store.close()
    where: dict[str, Any] = (
        {"database_url": database} if "://" in database else {"token_db_path": database}
    )
    settings = Settings(
        ollama_base_url=str(upstream.make_url("")).rstrip("/"),
        usage_journal_dir=str(tmp_path / "journal"),  # (not beside the default tokens.db)
        **where,
    )
    server = await aiohttp_server(create_app(settings))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as session:
        for query, expected in (("", range(count)), ("&user=ben", range(1, count, 2))):
            async with session.get(_export_url(server, "json", query)) as resp:
                assert resp.headers["Transfer-Encoding"] == "chunked"
                listed = await resp.json()
            assert [r["route"] for r in listed] == [f"/r{n}" for n in reversed(expected)]
    target = tmp_path / "usage.csv"
    export = functools.partial(write_usage_export, force=False)
    await asyncio.to_thread(export, database, str(target), "csv", None, None)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["route"] for r in rows] == [f"/r{n}" for n in range(count)]
