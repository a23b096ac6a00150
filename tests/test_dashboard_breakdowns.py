"""What the Usage page and My usage show is what the records say, in a real browser: the
breakdowns under the records answer the records' own filter, and an admin's My usage
shows the signed-in key's figures in its cards and its charts alike."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import UsageRecord

from .browser import chromium, shot, signed_in  # noqa: F401  (chromium: the browser fixture)

MODELS = ("llama3.2:latest", "qwen3:8b")


def _record(ts: float, key: tuple[int, str, str], model: str, status: int) -> UsageRecord:
    key_id, user, name = key
    return UsageRecord(
        ts, key_id, user, name, "POST", "/chat", model, status, 10, 20, 300.0, 20.0, 100,
        1000, False, False, 1000, None, None,
    )  # fmt: skip


@pytest.fixture
async def seeded(aiohttp_server: AiohttpServer, tmp_path: Path) -> tuple[str, str, str, int]:
    """A gateway whose records are: the admin's 3 of the last hours, alice's 7 and bob's 5
    over models and statuses. Its URL, the admin's and alice's keys, the admin key's id."""
    db = str(tmp_path / "tokens.db")
    now = time.time()
    store = await Store.open(db)
    try:
        admin, admin_key = await store.create_key("root", "ops", "admin")
        alice, alice_key = await store.create_key("alice", "laptop")
        bob, _ = await store.create_key("bob", "phone")
        keys = {r.id: (r.id, r.user, r.name) for r in (admin, alice, bob)}
        records = [_record(now - 3600 * n - 60, keys[admin.id], MODELS[0], 200) for n in range(3)]
        for n in range(12):
            owner = alice if n < 7 else bob
            status = (200, 200, 502)[n % 3]
            records.append(_record(now - 1800 * n - 30, keys[owner.id], MODELS[n % 2], status))
        await store.insert_usage(records)
    finally:
        await store.close()
    server = await aiohttp_server(create_app(Settings(token_db_path=db)))
    return str(server.make_url("")).rstrip("/"), admin_key, alice_key, admin.id


async def _api(url: str, key: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
        session.get(url + path) as resp,
    ):
        assert resp.status == 200, (path, resp.status)
        return await resp.json()


async def test_an_admins_my_usage_is_its_own_key_in_cards_and_charts(
    browser: Browser, seeded: tuple[str, str, str, int]
) -> None:
    url, admin_key, alice_key, admin_id = seeded
    # The API: an admin's series is the gateway's, or one key's; any other key its own.
    whole = await _api(url, admin_key, "/admin/series?hours=24")
    own = await _api(url, admin_key, f"/admin/series?hours=24&key_id={admin_id}")
    assert sum(b["requests"] for b in whole["series"]) == 15
    assert sum(b["requests"] for b in own["series"]) == 3
    alices = await _api(url, alice_key, f"/admin/series?hours=24&key_id={admin_id}")
    assert sum(b["requests"] for b in alices["series"]) == 7  # (not the admin's)

    context, page = await signed_in(browser, url, admin_key)
    await page.goto(url + "/ui/#/me")
    view = page.locator("#view-me[aria-busy=false]")
    await view.wait_for()
    exactly = page.get_by_text("Requests", exact=True)
    requests = view.locator(".stat").filter(has=exactly).first.locator(".value")
    await expect(requests).to_have_text("3")
    assert await _charted_requests(page) == 3
    assert "This key, last 24 hours" in (await view.text_content() or "")
    await shot(page, "me-admin-own-key")
    await context.close()


async def _charted_requests(page: Page) -> int:
    """The requests the first chart says it holds (its text alternative names each
    line's total: "This key 3")."""
    chart = page.locator("#view-me .chart-box").first
    label = await chart.get_attribute("aria-label") or ""
    found = re.search(r"This key ([\d,]+)", label)
    assert found is not None, label
    return int(found[1].replace(",", ""))


async def test_the_usage_pages_breakdowns_follow_its_filter(
    browser: Browser, seeded: tuple[str, str, str, int]
) -> None:
    url, admin_key, _, _ = seeded
    context, page = await signed_in(browser, url, admin_key)
    await page.goto(url + "/ui/#/usage")
    await page.wait_for_selector("#view-usage[aria-busy=false] #usage-breakdown table")
    for model, status in (("qwen3:8b", ""), ("", "502"), ("qwen3:8b", "502"), ("", "")):
        await page.fill("#f-model", model)
        await page.fill("#f-status", status)
        await page.click("#usage-filters button[type=submit]")
        # the records the page lists for that filter, through the API
        query = urlencode({k: v for k, v in (("model", model), ("status", status)) if v})
        records = (await _api(url, admin_key, f"/admin/usage?limit=500&{query}"))["records"]
        for n, label in enumerate(("user", "model")):
            counts = Counter(r[label] for r in records)
            rows = page.locator("#usage-breakdown table").nth(n).locator("tbody tr")
            await expect(rows.locator("td:first-child")).to_have_text(sorted(counts))
            await expect(rows.locator("td[data-label=Requests]")).to_have_text(
                [str(counts[name]) for name in sorted(counts)]
            )
    await shot(page, "usage-breakdowns-filtered")
    await context.close()
