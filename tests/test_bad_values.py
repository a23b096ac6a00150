"""No value from outside reaches a 500, and no value stored breaks a listing."""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Request

BAD_IDS = ["99999999999999999999", "²", "١٢", "1e3", "-1", "0x1", "%00", "1%0a", "a" * 300]
BAD_VALUES: list[object] = [
    None, True, -1, 0, 1.5, 1e308, -1e308, 10**30, "1", "", [], {}, ["x"], {"a": 1},
    "\u0000", "\ud800x", 2**63,
]  # fmt: skip
FIELDS = ["user", "name", "role", "expires_at", "expires_days", "rpm", "rph",
          "tokens_per_day", "max_concurrent", "models"]  # fmt: skip


async def _no_5xx(resp_status: int, what: object) -> None:
    assert resp_status < 500, what


async def test_the_admin_api_answers_bad_input_with_4xx(
    admin: TestClient[Request, None],
) -> None:
    """Before: '²' as a key id, a 20-digit id, and expires_at 1e308 answered 500 (the last
    one stored its row, and every listing failed from then on)."""
    tried = 0
    for key_id in BAD_IDS:
        for method in ("GET", "PATCH", "DELETE"):
            resp = await admin.request(method, f"/admin/keys/{key_id}", json={"rpm": 1})
            tried += 1
            await _no_5xx(resp.status, (method, key_id, await resp.text()))
    for field, value in itertools.product(FIELDS, BAD_VALUES):
        body = {"user": "fuzz", "name": f"k{tried}", field: value}
        resp = await admin.post("/admin/keys", json=body)
        tried += 1
        await _no_5xx(resp.status, (body, await resp.text()))
        if field not in ("user", "name"):
            resp = await admin.patch("/admin/keys/1", json={field: value})
            tried += 1
            await _no_5xx(resp.status, (field, value, await resp.text()))
    for raw in (b"[", b"\xff\xfe", b"null", b"[1]", b'{"user":"a"' + b" " * 10, b"1e999"):
        resp = await admin.post("/admin/keys", data=raw)
        tried += 1
        await _no_5xx(resp.status, raw)
    for query in ("since=nan", "since=1e999", "until=-inf", "since=%ff", "since=" + "9" * 400):
        resp = await admin.get(f"/admin/stats?{query}")
        tried += 1
        await _no_5xx(resp.status, query)
    listing = await admin.get("/admin/keys")
    assert listing.status == 200
    assert tried > 300


@pytest.mark.parametrize("value", [1e308, 10**20, -5, 253402300800])
async def test_an_expiry_no_calendar_holds_is_refused(
    admin: TestClient[Request, None], value: float
) -> None:
    resp = await admin.post("/admin/keys", json={"user": "e", "name": "x", "expires_at": value})
    assert resp.status == 400
    assert (await admin.get("/admin/keys")).status == 200


async def test_rows_an_older_version_left_do_not_break_listing(
    admin: TestClient[Request, None], db_path: str
) -> None:
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("UPDATE keys SET expires_at = 1e308, last_used_at = 'soon', models = '{'"
                   " WHERE user = 'alice'")  # fmt: skip
        db.execute("UPDATE keys SET rpm = 'ten' WHERE user = 'root'")
        db.commit()
    resp = await admin.get("/admin/keys")
    assert resp.status == 200, await resp.text()
    keys = {k["user"]: k for k in (await resp.json())["keys"]}
    assert keys["alice"]["models"] == [] and keys["alice"]["last_used"] is None
    assert keys["root"]["rpm"] is None


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer aig_\xff\xfe" + b"a" * 41,
        b"x-api-key: \xc3\x28aig",
        b"x-api-key: \xe2\x80\xa8",
    ],
)
async def test_non_text_bytes_in_a_key_are_401(
    client: TestClient[Request, None], header: bytes
) -> None:
    server = client.server
    import asyncio

    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /api/tags HTTP/1.1\r\nHost: gw\r\n" + header + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(4096), 3)
    writer.close()
    assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 400", b"HTTP/1.0 400")), answer[:80]
