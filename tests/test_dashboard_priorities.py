"""A key's and a user's priority class set from the dashboard's change forms, in a real
browser: only the priority changes, as the admin API then holds it."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.records import KeyLimits

from .browser import chromium, policy_refusals, shot, signed_in  # noqa: F401  (the fixture)
from .conftest import make_key


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
    assert refused == []
    await context.close()
