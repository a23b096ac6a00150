"""A key's and a user's priority class set from the dashboard's change forms, in a real
browser: only the priority changes, as the admin API then holds it; and the Keys and
Users lists mark each class that is not normal, as the admin API holds it."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.records import KeyLimits

from .browser import chromium, policy_refusals, shot, signed_in  # noqa: F401  (the fixture)
from .conftest import make_key

# In the page: each listed row's priority mark (None: none shown), by its name: a key's
# id (the last line of its Role / status cell), a user's name.
MARKS = """
([view, column]) => {
  const rows = [...document.querySelectorAll(`#view-${view} tbody tr:not(.below)`)];
  return Object.fromEntries(rows.map((tr) => {
    const cell = tr.querySelector(`td[data-label='${column}']`);
    const lines = [...cell.querySelectorAll("span")].map((s) => s.textContent);
    const marks = lines.filter((line) => line.includes(" priority"));
    const name = view === "keys" ? lines.at(-1).replace("id ", "")
      : tr.querySelector("td[data-label='User']").textContent;
    return [name, marks.length ? marks.join(" | ") : null];
  }));
}
"""


def mark(queue_class: str, inherited: bool = False) -> str | None:
    """The mark a list should show for a class: none for the usual one."""
    if queue_class == "normal":
        return None
    return f"{queue_class} priority" + (" (its user's)" if inherited else "")


async def _marks_shown(page: Page, view: str) -> dict[str, str | None]:
    await page.evaluate(f"location.hash = '#/{view}'")  # (at 390 px the nav is folded)
    await page.wait_for_selector(f"#view-{view}[aria-busy=false] tbody tr")
    column = "Role / status" if view == "keys" else "Status"
    return cast(dict[str, str | None], await page.evaluate(MARKS, [view, column]))


async def _marks_held(url: str, admin_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The marks the lists should show, from what the admin API holds."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        async with session.get(f"{url}/admin/keys") as resp:
            keys = (await resp.json())["keys"]
        async with session.get(f"{url}/admin/users") as resp:
            users = (await resp.json())["users"]
    return (
        {str(k["id"]): mark(k["queue_class"], k["priority"] is None) for k in keys},
        {u["user"]: mark(u["priority"]) for u in users},
    )


async def test_the_lists_mark_each_class_as_the_api_holds_it(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    await make_key(db_path, "alice", "laptop")
    await make_key(db_path, "bob", "ci")
    await make_key(db_path, "bob", "nightly")
    server: TestServer = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        for path, body in (
            ("/admin/users/bob", {"priority": "low"}),  # both of bob's keys, by their user
            ("/admin/users/root", {"priority": "high"}),
        ):
            async with session.patch(url + path, json=body) as resp:
                assert resp.status == 200, await resp.text()
        async with session.get(f"{url}/admin/keys") as resp:
            (nightly,) = [k for k in (await resp.json())["keys"] if k["key_name"] == "nightly"]
        async with session.patch(
            f"{url}/admin/keys/{nightly['id']}", json={"priority": "high"}
        ) as resp:
            assert resp.status == 200, await resp.text()
    keys_held, users_held = await _marks_held(url, admin_key)
    # (every kind of row is there: none, its own, its user's; high and low)
    assert sorted(map(str, keys_held.values())) == [
        "None", "high priority", "high priority (its user's)", "low priority (its user's)"
    ]  # fmt: skip
    assert sorted(map(str, users_held.values())) == ["None", "high priority", "low priority"]
    for width in (1280, 390):
        context, page = await signed_in(browser, url, admin_key, width)
        try:
            assert await _marks_shown(page, "keys") == keys_held, width
            await shot(page, f"keys-priority-marks-{width}")
            assert await _marks_shown(page, "users") == users_held, width
            await shot(page, f"users-priority-marks-{width}")
        finally:
            await context.close()


async def test_the_change_forms_set_only_the_priority(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    await make_key(db_path, "alice", "laptop", limits=KeyLimits(rpm=7), models=["llama3*"])
    server: TestServer = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    auth = {"Authorization": f"Bearer {admin_key}"}

    async def held() -> tuple[dict[str, Any], dict[str, Any]]:
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.get(f"{url}/admin/keys") as resp:
                (key,) = [k for k in (await resp.json())["keys"] if k["user"] == "alice"]
            async with session.get(f"{url}/admin/users/alice") as resp:
                user = await resp.json()
        user.pop("refused", None)
        return key, user

    key_before, user_before = await held()
    assert (key_before["priority"], key_before["queue_class"]) == (None, "normal")
    context, page = await signed_in(browser, url, admin_key)
    refused = policy_refusals(page)
    await page.click("#nav a[data-view=keys]")
    await page.locator("tr", has_text="alice").locator("button[data-action=edit]").click()
    assert await page.input_value("#edit-key-priority") == ""  # "its user's"
    await page.select_option("#edit-key-priority", "high")
    await shot(page, "keys-priority")
    await page.click("#edit-key button[type=submit]")
    await page.wait_for_selector("#edit-key", state="detached")
    key_after, _ = await held()
    assert (key_after["priority"], key_after["queue_class"]) == ("high", "high")
    unchanged = {**key_after, "priority": None, "queue_class": "normal"}
    assert unchanged == key_before

    await page.click("#nav a[data-view=users]")
    await page.locator("tr", has_text="alice").locator("button[data-action=edit]").click()
    assert await page.input_value("#edit-user-priority") == "normal"
    await page.select_option("#edit-user-priority", "low")
    await page.click("#edit-user button[type=submit]")
    await page.wait_for_selector("#edit-user", state="detached")
    key_last, user_after = await held()
    assert user_after == {**user_before, "priority": "low"}
    assert key_last["queue_class"] == "high"  # its own class wins over its user's
    # The lists show each change made, as the API holds it.
    keys_held, users_held = await _marks_held(url, admin_key)
    assert (
        users_held["alice"] == "low priority" and keys_held[str(key_last["id"])] == "high priority"
    )
    assert await _marks_shown(page, "users") == users_held
    assert await _marks_shown(page, "keys") == keys_held
    assert refused == []
    await context.close()
