"""The response cache on the dashboard, in a real browser: the Overview shows this
gateway's hit rate, hits, misses, answers and bytes held (the figures GET /admin/cache
holds, after a miss and a hit), fits a phone in both themes, and Clear (after a confirm;
a No keeps everything) empties the cache and shows it emptied; with the cache off the
Overview shows none of it. The Usage page marks the record a hit answered, in words, and
its filter picks the records by it."""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.relay.state import RELAY

from .browser import Theme, chromium, policy_refusals, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key
from .test_cache import EMBED, _listed, settings
from .test_dashboard_fit import _show

__all__ = ["settings"]  # (test_cache's gateway settings: the cache on, 1 MiB)

SIZES: tuple[tuple[int, Theme], ...] = (
    (1280, "light"),
    (1280, "dark"),
    (390, "light"),
    (390, "dark"),
)

# In the page: the cache's figures by their labels, and what does not fit.
SHOWN = """
() => {
  const figures = {};
  for (const box of document.querySelectorAll("#cache .stat")) {
    figures[box.querySelector(".label").textContent] = box.querySelector(".value").textContent;
  }
  const outside = (r) => r.left < 0 || r.right > innerWidth;
  const out = [...document.querySelectorAll("#cache .stat, #cache-clear")]
    .filter((e) => outside(e.getBoundingClientRect()))
    .map((e) => e.textContent);
  const cut = [...document.querySelectorAll("#cache .value")]
    .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent);
  return { figures, out, cut, pageWidth: document.scrollingElement.scrollWidth, innerWidth };
}
"""


def _bytes(n: int) -> str:
    """What cache.js shows for `n` bytes (its rounding: half up, as toFixed)."""
    units, value, unit = ("B", "KiB", "MiB", "GiB", "TiB"), Decimal(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    if unit:
        value = value.quantize(Decimal("0.1"), ROUND_HALF_UP).normalize()
    return f"{value:f} {units[unit]}"


async def _api(url: str, key: str, method: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _shown(page: Page) -> dict[str, Any]:
    return cast(dict[str, Any], await page.evaluate(SHOWN))


async def test_the_overview_shows_this_gateways_cache_and_clears_it(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, db_path: str
) -> None:
    gateway = await aiohttp_server(create_app(settings))
    await _listed(gateway)
    url = str(gateway.make_url("")).rstrip("/")
    admin_key = await make_key(db_path, "root", "ops", "admin")
    user_key = await make_key(db_path, "alice", "laptop")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {user_key}"}) as user:
        for mark in ("miss", "hit"):
            async with user.post(url + "/api/embed", data=EMBED) as resp:
                assert resp.status == 200 and resp.headers["X-Aigateway-Cache"] == mark
    usage = gateway.app[RELAY].usage
    assert usage is not None
    await usage.flush()
    held = (await _api(url, admin_key, "GET", "/admin/cache"))["stats"]
    assert (held["hits"], held["misses"], held["entries"]) == (1, 1, 1)
    expected = {
        "Hit rate": "50%",
        "Hits": "1",
        "Misses": "1",
        "Answers held": "1",
        "Bytes held, of 1 MiB": _bytes(held["bytes"]),
    }
    assert held["capacity_bytes"] == 1024**2

    for width, theme in SIZES:
        context, page = await signed_in(browser, url, admin_key, width, theme)
        refused = policy_refusals(page)
        try:
            await _show(page, url, "overview")
            found = await _shown(page)
            await shot(page, f"overview-cache-{width}-{theme}")
            where = f"at {width} px, {theme}"
            assert found["figures"] == expected, where
            assert found["out"] == [] and found["cut"] == [], (where, found)
            assert found["pageWidth"] <= found["innerWidth"], (
                f"the Overview scrolls sideways {where}"
            )
            if (width, theme) == (390, "dark"):
                # The Usage page: the hit's record marked in words (newest first).
                await _show(page, url, "usage")
                statuses = await page.locator(
                    "#usage-results td[data-label=Status]"
                ).all_inner_texts()
                assert [s.split() for s in statuses] == [["200", "cached"], ["200"]]
                # Its filter: the records an upstream answered, and their breakdown.
                await page.select_option("#f-cached", "false")
                await page.click("#usage-filters button[type=submit]")
                await page.wait_for_function(
                    "() => document.querySelectorAll('#usage-results tbody tr').length === 1"
                )
                status = page.locator("#usage-results td[data-label=Status]")
                assert (await status.all_inner_texts()) == ["200"]
                requests = page.locator("#usage-breakdown td[data-label=Requests]").first
                await page.wait_for_function(
                    "() => document.querySelector('#usage-breakdown td[data-label=Requests]')"
                    "?.textContent === '1'"
                )
                assert await requests.inner_text() == "1"
                none = "Refused requests are not counted by model, route, status or response cache."
                assert await page.inner_text("#usage-refused .refused-none") == none
                await shot(page, f"usage-cached-{width}-{theme}")
            assert refused == [], refused
        finally:
            await context.close()

    context, page = await signed_in(browser, url, admin_key)
    try:
        await _show(page, url, "overview")
        # No: nothing is cleared.
        page.once("dialog", lambda d: d.dismiss())
        await page.click("#cache-clear")
        assert page.dialogs[-1].startswith("Clear this gateway's response cache (1 answer)")  # type: ignore[attr-defined]
        assert (await _api(url, admin_key, "GET", "/admin/cache"))["stats"]["entries"] == 1
        # Yes: emptied, and the Overview shows it so (the counts since start stay).
        page.once("dialog", lambda d: d.accept())
        await page.click("#cache-clear")
        await page.wait_for_function(
            "() => document.querySelector('#cache .stat:nth-child(4) .value')?.textContent === '0'"
        )
        after = (await _api(url, admin_key, "GET", "/admin/cache"))["stats"]
        assert (after["entries"], after["bytes"], after["hits"]) == (0, 0, 1)
        found = await _shown(page)
        assert found["figures"] == {
            **expected,
            "Answers held": "0",
            "Bytes held, of 1 MiB": "0 B",
        }
        assert await page.is_disabled("#cache-clear")  # (nothing left to clear)
        await shot(page, "overview-cache-cleared")
    finally:
        await context.close()


async def test_with_the_cache_off_the_overview_shows_none_of_it(
    browser: Browser, aiohttp_server: AiohttpServer, settings: Settings, db_path: str
) -> None:
    gateway: TestServer = await aiohttp_server(create_app(replace(settings, cache_bytes=0)))
    url = str(gateway.make_url("")).rstrip("/")
    admin_key = await make_key(db_path, "root", "ops", "admin")
    context, page = await signed_in(browser, url, admin_key)
    try:
        await _show(page, url, "overview")
        assert await page.locator("#cache, #cache-clear").count() == 0
        assert "Response cache" not in (await page.text_content("#view-overview") or "")
        assert await page.locator("#view-overview h2", has_text="Last 24 hours").count() == 1
    finally:
        await context.close()
