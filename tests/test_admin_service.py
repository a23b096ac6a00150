"""One admin service (admin/service.py) for the admin API, the dashboard and both CLIs:
each admin action is one transaction, checked whole before anything is written."""

from __future__ import annotations

import asyncio
import sqlite3

from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from aigateway.admin import service
from aigateway.cli.flags import cli
from aigateway.db.store import Store
from aigateway.records import Budget, InvalidInputError


def _version(db_path: str) -> int:
    """key_changes.version: every transaction that changes keys moves it once."""
    with sqlite3.connect(db_path) as conn:
        (version,) = conn.execute("SELECT version FROM key_changes").fetchone()
    return int(version)


async def test_a_user_change_refused_in_part_changes_nothing(
    admin: TestClient[web.Request, None],
) -> None:
    """A good email beside a bad `disabled` was written before the 400 (the email, then
    the budget, then the flag were three transactions)."""
    assert (await admin.post("/admin/users", json={"user": "acme"})).status == 201
    resp = await admin.patch(
        "/admin/users/acme",
        json={"email": "ops@acme.example", "budget": {"amount": 5}, "disabled": "yes"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "disabled must be true or false"
    user = await (await admin.get("/admin/users/acme")).json()
    assert (user["email"], user["budget"], user["status"]) == (None, None, "active")


async def test_a_changed_key_is_answered_as_it_now_is(admin: TestClient[web.Request, None]) -> None:
    """The key's view after a change counts its user: a key of a disabled user says so
    (the change's answer was read without its user before, and said "active")."""
    made = await (await admin.post("/admin/keys", json={"user": "bea", "name": "k"})).json()
    resp = await admin.patch("/admin/users/bea", json={"disabled": True})
    assert resp.status == 200
    changed = await admin.patch(f"/admin/keys/{made['id']}", json={"rpm": 5})
    assert changed.status == 200
    assert (await changed.json())["status"] == "user disabled"


async def test_each_admin_action_is_one_transaction(db_path: str, key: str) -> None:
    """A key made with its budget, a key changed with its budget, a user made with its
    budget and a user changed with its budget and flag: one key-change version each
    (two, two, one and three before)."""
    store = await Store.open(db_path)
    try:
        steps = [
            service.create_key(store, "cy", "k", budget=Budget(5_000_000)),
            service.change_active_key(store, "cy", "k", {"rpm": 3, "budget": None}),
            service.create_user(store, "dee", budget=Budget(1_000_000, "daily")),
            service.change_user(
                store, "dee", {"note": "n", "budget": Budget(2_000_000), "disabled": True}
            ),
        ]
        for step in steps:
            before = await asyncio.to_thread(_version, db_path)
            await step
            assert await asyncio.to_thread(_version, db_path) == before + 1
        record = await store.find_active_key("cy", "k")
        assert (record.limits.rpm, record.budget) == (3, None)
        user = await store.get_user("dee")
        assert (user.note, user.budget, user.disabled) == ("n", Budget(2_000_000), True)
    finally:
        await store.close()


async def test_a_bad_value_anywhere_in_a_change_writes_nothing(db_path: str, key: str) -> None:
    store = await Store.open(db_path)
    try:
        record = await store.find_active_key("alice", "laptop")
        for changes in (
            {"rpm": 7, "budget": "lots"},
            {"rpm": 7, "models": []},
            {"rpm": 7, "role": "root"},
        ):
            try:
                await service.change_key(store, record.id, changes)
            except InvalidInputError:
                pass
            else:
                raise AssertionError(f"{changes} was taken")
        assert (await store.get_key(record.id)).limits.rpm is None
    finally:
        await store.close()


def test_the_cli_makes_a_key_with_its_budget_in_one_transaction(db_path: str) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["-g", "eve", "k", "--budget", "2.5", "--db", db_path])
    assert made.exit_code == 0, made.output
    version = _version(db_path)
    changed = runner.invoke(
        cli, ["--set", "eve", "k", "--rpm", "4", "--budget", "none", "--db", db_path]
    )
    assert changed.exit_code == 0, changed.output
    assert _version(db_path) == version + 1
