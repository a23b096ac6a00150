"""The dashboard's My keys, in the browser: a user-role key makes a key with the create
form (its secret shown once), sees a refusal beside the field that caused it, and revokes
what it made; what the API then holds is read back. The page is not offered where the
feature does not apply."""

from __future__ import annotations

import dataclasses
import re
import time

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import Budget, KeyLimits

from .browser import chromium, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key


async def test_a_user_makes_and_revokes_its_own_keys(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, db_path: str
) -> None:
    gateway: TestServer = await aiohttp_server(
        create_app(dataclasses.replace(settings, self_service_keys=2))
    )
    admin_key = await make_key(db_path, "root", "ops", "admin")
    store = await Store.open(db_path)
    try:
        maker, secret = await store.create_key(
            "carol", "laptop", "user", time.time() + 30 * 86400, KeyLimits(rpm=60),
            ["llama3*"], Budget(2_000_000, "monthly"),
        )  # fmt: skip
    finally:
        await store.close()
    url = str(gateway.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, secret)
    try:
        await page.click("#nav a[data-view=mykeys]")
        await page.wait_for_selector("#view-mykeys[aria-busy=false] h1")
        await expect(page.locator("#own-key-count")).to_have_text(
            "0 of 2 active keys made by this key."
        )
        # Past its maker: the refusal stands under the field, in the field's words.
        await page.fill("#create-own-key-name", "ci")
        await page.click("#create-own-key summary")
        await page.fill("#create-own-key-rpm", "100")
        await page.click("#create-own-key button[type=submit]")
        await expect(page.locator("#create-own-key-rpm-error")).to_contain_text(
            "Requests per minute must be from 1 to this key's own, 60"
        )
        await page.fill("#create-own-key-rpm", "20")
        await page.fill("#create-own-key-models", "llama3.1*")
        await page.click("#create-own-key button[type=submit]")
        shown = await page.text_content("#new-key-value")
        assert shown is not None and re.fullmatch(r"aig_[A-Za-z0-9_-]{43}", shown)
        await shot(page, "mykeys-created")
        await expect(page.locator("#own-key-count")).to_have_text(
            "1 of 2 active keys made by this key."
        )
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/admin/keys", headers={"Authorization": f"Bearer {admin_key}"}) as r,
        ):
            held = {k["key_name"]: k for k in (await r.json())["keys"]}
        made = held["ci"]
        assert (made["user"], made["role"], made["created_by"]) == ("carol", "user", maker.id)
        assert (made["rpm"], made["models"]) == (20, ["llama3.1*"])
        assert made["expires"] == held["laptop"]["expires"]  # (left empty: the maker's)
        assert made["budget"] == {"amount": 2_000_000, "period": "monthly", "alert_percent": None}
        await page.click("#new-key button:has-text('I have stored it')")
        assert await page.locator("#new-key-value").count() == 0
        page.once("dialog", lambda d: d.accept())
        await page.locator("tr", has_text="ci").locator("button[data-action=revoke]").click()
        await page.wait_for_selector("tr:has-text('ci') td:has-text('revoked')")
        store = await Store.open(db_path)
        try:
            assert (await store.get_key(made["id"])).revoked
        finally:
            await store.close()
    finally:
        await context.close()
    # Not offered to an admin key, nor to a key made by self-service.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/admin/me/keys",
            json={"name": "ci2"},
            headers={"Authorization": f"Bearer {secret}"},
        ) as r,
    ):
        child = (await r.json())["key"]
    for key in (admin_key, child):
        context, page = await signed_in(browser, url, key)
        try:
            await expect(page.locator("#nav a[data-view=usage]")).to_have_count(1)
            assert await page.locator("#nav a[data-view=mykeys]").count() == 0
        finally:
            await context.close()
