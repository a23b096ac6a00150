"""Users (customers) as records of their own: made from key owners' names, listed, changed,
disabled and enabled again, from the store, the flag CLI and the admin API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Request

from aigateway.db.store import Store
from aigateway.records import DuplicateKeyError, InvalidInputError, KeyNotFoundError

from .test_instances import cli

CHAT = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def test_users_on_both_databases(database: str) -> None:
    store = await Store.open(database)
    try:
        acme = await store.create_user("acme", "ops@acme.example", "invoice monthly")
        assert (acme.name, acme.email, acme.note, acme.disabled) == (
            "acme", "ops@acme.example", "invoice monthly", False,
        )  # fmt: skip
        with pytest.raises(DuplicateKeyError):
            await store.create_user("acme")
        for email in ("no-at-sign", "a@b@c", "@acme.example", "sp ace@acme.example"):
            with pytest.raises(InvalidInputError):
                await store.create_user("other", email)
        with pytest.raises(InvalidInputError):
            await store.update_user("acme", {"note": "two\nlines"})
        # A key for a new name makes its user; one for an existing user refers to it.
        await store.create_key("acme", "laptop")
        await store.create_key("bob", "phone")
        users = {u.name: u for u in await store.list_users()}
        assert (users["acme"].active_keys, users["bob"].active_keys) == (1, 1)
        assert users["bob"].email is None

        before = await store.data_version() if database.endswith(".db") else None
        disabled = await store.set_user_disabled("acme", True)
        assert disabled.disabled and disabled.disabled_at is not None
        keys = {k.user: k for k in await store.list_keys()}
        assert keys["acme"].user_disabled and keys["acme"].status() == "user disabled"
        assert not keys["bob"].user_disabled
        with pytest.raises(InvalidInputError, match="disabled"):
            await store.create_key("acme", "second")
        if before is not None:
            assert await store.data_version() == before  # (our own write: SQLite's rule)
        enabled = await store.set_user_disabled("acme", False)
        assert not enabled.disabled and enabled.disabled_at is None
        assert not (await store.find_active_key("acme", "laptop")).user_disabled
        changed = await store.update_user("acme", {"email": "", "note": "net 30"})
        assert (changed.email, changed.note) == (None, "net 30")
        with pytest.raises(KeyNotFoundError):
            await store.set_user_disabled("nobody", True)
    finally:
        await store.close()


async def test_a_user_disabled_by_the_cli_is_refused_within_a_second(
    client: TestClient[Request, None], db_path: str
) -> None:
    assert (await client.post("/api/chat", json=CHAT)).status == 200
    done = await asyncio.to_thread(cli, "--disable-user", "alice", "--db", db_path)
    assert done.returncode == 0, done.stderr
    assert "stop on every gateway" in done.stderr

    async def status() -> tuple[int, str]:
        resp = await client.post("/api/chat", json=CHAT)
        return resp.status, (await resp.text())

    started = time.monotonic()
    while (answer := await status())[0] == 200:
        assert time.monotonic() - started < 1.0, "still served a second later"
    assert answer[0] == 401 and "user is disabled" in answer[1]
    done = await asyncio.to_thread(cli, "--enable-user", "alice", "--db", db_path)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    while (await status())[0] != 200:
        assert time.monotonic() - started < 1.0, "still refused a second later"


async def test_users_through_the_admin_api(
    admin: TestClient[Request, None], client: TestClient[Request, None]
) -> None:
    resp = await admin.post("/admin/users", json={"user": "acme", "email": "ops@acme.example"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "active"
    assert (await admin.post("/admin/users", json={"user": "acme"})).status == 409
    for bad in ({"user": 5}, {"user": "x", "email": "nope"}, {"user": "x", "role": "admin"}, {}):
        assert (await admin.post("/admin/users", json=bad)).status == 400, bad
    listed = (await (await admin.get("/admin/users")).json())["users"]
    assert {u["user"] for u in listed} >= {"acme", "alice", "root"}
    assert (await admin.get("/admin/users/nobody")).status == 404
    assert (await admin.patch("/admin/users/alice", json={"disabled": "yes"})).status == 400

    # Disabling a user stops its keys at once on this gateway.
    resp = await admin.patch("/admin/users/alice", json={"disabled": True, "note": "unpaid"})
    assert resp.status == 200
    body = await resp.json()
    assert (body["status"], body["note"]) == ("disabled", "unpaid")
    assert (await client.post("/api/chat", json=CHAT)).status == 401
    resp = await admin.patch("/admin/users/alice", json={"disabled": False})
    assert (await resp.json())["status"] == "active"
    assert (await client.post("/api/chat", json=CHAT)).status == 200
    # A user key may not manage users.
    for method, path in (("GET", "/admin/users"), ("PATCH", "/admin/users/alice")):
        assert (await client.request(method, path, json={})).status == 403


def test_the_flag_cli_manages_users(tmp_path: Path) -> None:
    db = str(tmp_path / "tokens.db")
    made = cli("--add-user", "acme", "--email", "ops@acme.example", "--note", "monthly", "--db", db)
    assert made.returncode == 0, made.stderr
    assert cli("-g", "acme", "laptop", "--db", db).returncode == 0
    listed = cli("--users", "--format", "json", "--db", db)
    assert '"active_keys": 1' in listed.stdout and '"email": "ops@acme.example"' in listed.stdout
    again = cli("--add-user", "acme", "--db", db)
    assert again.returncode == 1 and again.stderr.strip() == "Error: user 'acme' exists already"
    bad = cli("--set-user", "acme", "--email", "nope", "--db", db)
    assert bad.returncode == 1 and "not an email address" in bad.stderr
    assert cli("--disable-user", "acme", "--db", db).returncode == 0
    refused = cli("-g", "acme", "second", "--db", db)
    assert refused.returncode == 1 and "disabled" in refused.stderr
    keys = cli("-l", "--format", "csv", "--db", db)
    assert "user disabled" in keys.stdout
    # A user name a spreadsheet would run stays text in the CSV.
    assert cli("--add-user", "=HYPERLINK(1)", "--db", db).returncode == 0
    assert "'=HYPERLINK(1)" in cli("--users", "--format", "csv", "--db", db).stdout
    mixed = cli("--users", "--email", "x@y.z", "--db", db)
    assert mixed.returncode == 1 and "go with --add-user" in mixed.stderr
