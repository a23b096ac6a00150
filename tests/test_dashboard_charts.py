"""The dashboard's charts, measured in Chromium: the range and split buttons ask for what
they say, the legend names what the API gave (hostile names as text), the tooltip and the
table alternative show the API's own figures for a bucket, in UTC, the colours are the
theme's, an error is shown where the charts would be, a user's key sees its own usage
only, and on a phone every chart fits its card. All under the page's policy."""

from __future__ import annotations

import re
import time
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Route
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import DAY, KeyLimits, UsageRecord

from .browser import chromium, policy_refusals, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key

XSS = "<img src=x onerror=alert(1)>"
MODELS = ["llama3.2:latest", "qwen3:8b", "mistral:latest", XSS, "phi4:latest", "gemma3:1b", "tiny"]
# (each record's model, by its number modulo 20: most use the first, two fall to "other")
PICK = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 6]


@pytest.fixture
async def dashboard(aiohttp_server: AiohttpServer, settings: Settings) -> TestServer:
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


async def _history(db_path: str) -> tuple[str, str]:
    """Thirty days of records of seven models (one named like markup) from three users,
    some of them errors; the admin key and alice's key (whose records these partly are)."""
    admin_key = await make_key(db_path, "root", "ops", "admin")
    store = await Store.open(db_path)
    try:
        alice, alice_key = await store.create_key(
            "alice", "laptop", "user", None, KeyLimits(), None, None
        )
        bob, _ = await store.create_key(XSS, "ci", "user", None, KeyLimits(), None, None)
        now = time.time()
        records = []
        for i in range(600):
            key = alice if i % 3 else bob
            records.append(
                UsageRecord(
                    ts=now - (i * 4391) % (29 * DAY),  # spread over 29 days, two per hour or so
                    key_id=key.id,
                    user=key.user,
                    key_name=key.name,
                    method="POST",
                    route="/api/chat",
                    model=MODELS[PICK[i % 20]],
                    status=500 if i % 11 == 0 else 200,
                    prompt_tokens=10 + i % 7,
                    completion_tokens=20 + i % 13,
                    duration_ms=100.0,
                    ttfb_ms=20.0,
                    bytes_in=100,
                    bytes_out=200,
                    client_gone=False,
                    cost=1_000_000 * (1 + i % 5),
                )
            )
        await store.insert_usage(records)
    finally:
        await store.close()
    return admin_key, alice_key


async def _api(url: str, key: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _drawn(page: Page, view: str) -> None:
    """The view's three charts drawn (after the answer and the library are in)."""
    await page.wait_for_function(
        f"""() => {{
            const v = document.querySelector("#view-{view}");
            return v && !v.querySelector(".usage-charts[aria-busy]")
              && v.querySelectorAll(".chart-box[data-drawn] canvas").length === 3;
        }}"""
    )


async def _legend(page: Page) -> list[str]:
    return [
        (t or "").strip() for t in await page.locator(".chart-legend button").all_text_contents()
    ]


def _name(group: dict[str, Any], split: str, scope: str) -> str:
    if group["other"]:
        return "Other users" if split == "user" else "Other models"
    if split == "total":
        return "This key" if scope == "me" else "All keys"
    return cast(str, group["name"]) or "(no model)"


# The hover tip over the requests chart at a fraction of its width: its text lines.
TIP_AT = """
(fraction) => {
  const over = document.querySelector(".chart-card .u-over");
  const r = over.getBoundingClientRect();
  const x = r.left + r.width * fraction, y = r.top + r.height / 2;
  over.dispatchEvent(new MouseEvent("mouseenter", { clientX: x, clientY: y, bubbles: true }));
  over.dispatchEvent(new MouseEvent("mousemove", { clientX: x, clientY: y, bubbles: true }));
  const tip = over.querySelector(".chart-tip");
  if (!tip || tip.hidden) return null;
  const t = tip.getBoundingClientRect();
  return { lines: [...tip.children].map((c) => c.textContent), left: t.left, right: t.right };
}
"""

# Each chart's canvas against its card, and the page's sideways scroll.
FIT = """
() => ({
  page: document.scrollingElement.scrollWidth - innerWidth,
  charts: [...document.querySelectorAll("#view .chart-card")].map((card) => {
    const c = card.getBoundingClientRect();
    const canvas = card.querySelector("canvas").getBoundingClientRect();
    return { over: Math.max(0, canvas.right - c.right, c.left - canvas.left), width: canvas.width };
  }),
})
"""


async def test_the_charts_show_what_the_api_holds_by_range_and_split(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key, alice_key = await _history(db_path)
    url = str(dashboard.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, admin_key)
    refused = policy_refusals(page)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/admin/series" in r.url else None)
    try:
        await page.reload()  # (the first load came before the listener)
        await _drawn(page, "overview")
        assert await _legend(page) == ["All keys", "Errors"]
        assert asked[-1].endswith("/admin/series?range=24h&split=total&scope=gateway")
        label = await page.get_attribute(".chart-box", "aria-label") or ""
        assert "Requests per hour" in label and "UTC" in label
        # 30 days by model: the legend is the API's groups, most used first, then the rest.
        await page.click("button[data-range='30d']")
        await _drawn(page, "overview")
        await page.click("button[data-split='model']")
        await _drawn(page, "overview")
        assert asked[-1].endswith("/admin/series?range=30d&split=model&scope=gateway")
        assert await page.get_attribute("button[data-split='model']", "aria-pressed") == "true"
        doc = await _api(url, admin_key, "/admin/series?range=30d&split=model&scope=gateway")
        names = [_name(g, "model", "gateway") for g in doc["groups"]]
        assert len(names) == 6 and names[-1] == "Other models" and XSS in names
        assert await _legend(page) == [*names, "Errors"]
        assert page.dialogs == []  # type: ignore[attr-defined]  # (the markup stayed text)
        await shot(page, "charts-overview-30d-model-light")
        # The tooltip: a day in UTC and each line's figure, as the API holds it.
        seen = 0
        for fraction in (0.1, 0.35, 0.6, 0.85, 0.97):
            tip = await page.evaluate(TIP_AT, fraction)
            assert tip is not None, fraction
            day = re.fullmatch(r"(\d{4}-\d\d-\d\d) \(UTC\)", tip["lines"][0])
            assert day, tip
            start = int(time.mktime(time.strptime(day[1] + " UTC", "%Y-%m-%d %Z"))) - time.timezone
            i = doc["starts"].index(start)
            shown = dict(line.rsplit(": ", 1) for line in tip["lines"][1:])
            errors = sum(g["errors"][i] for g in doc["groups"])
            want = {
                name: f"{g['requests'][i]:,}" for name, g in zip(names, doc["groups"], strict=True)
            }
            assert shown == {**want, "Errors": f"{errors:,}"}, (fraction, tip)
            seen += sum(g["requests"][i] for g in doc["groups"])
        assert seen > 0  # (the days hovered held requests: the comparison was real)
        await shot(page, "charts-overview-tooltip")
        # The table alternative: every day with requests, each group's figure.
        requests_card = page.locator(".chart-card").first
        await requests_card.locator("details summary").click()
        rows = await requests_card.locator("details tbody tr").all()
        api_days = [i for i in range(30) if any(g["requests"][i] for g in doc["groups"])]
        assert len(rows) == len(api_days)
        cells = await rows[-1].locator("td").all_text_contents()
        assert cells[1:-1] == [f"{g['requests'][api_days[-1]]:,}" for g in doc["groups"]]
        # By user: top users, the markup-like name as text.
        await page.click("button[data-split='user']")
        await _drawn(page, "overview")
        assert await _legend(page) == ["alice", XSS, "Errors"]  # (root has no record)
        # Dark: the lines take the dark theme's colours.
        light = await page.evaluate(
            "getComputedStyle(document.querySelector('.swatch')).backgroundColor"
        )
        await page.click("#theme")
        await _drawn(page, "overview")
        dark = await page.evaluate(
            "getComputedStyle(document.querySelector('.swatch')).backgroundColor"
        )
        assert (light, dark) == ("rgb(0, 114, 178)", "rgb(86, 180, 233)")  # --c1 of each
        await page.click("button[data-split='model']")
        await _drawn(page, "overview")
        await shot(page, "charts-overview-30d-model-dark")

        # An error is shown where the charts are, in the API's words.
        async def away(route: Route) -> None:
            await route.fulfill(status=503, json={"error": "the database is away"})

        await page.route("**/admin/series?range=7d*", away)
        await page.click("button[data-range='7d']")
        alert = page.locator(".usage-charts [role=alert]")
        await alert.filter(has_text="the database is away").wait_for()
        assert await page.locator(".chart-card").count() == 0  # (none of the range before)
        await page.unroute("**/admin/series?range=7d*", away)
        await page.click("button[data-range='30d']")  # and the next answer shows again
        await _drawn(page, "overview")
        assert await alert.text_content() == ""
        assert refused == []
    finally:
        await context.close()

    # A user's key, on a phone: its own usage only, never split by user; every chart fits.
    for theme in ("light", "dark"):
        context, page = await signed_in(browser, url, alice_key, 390, theme)
        refused = policy_refusals(page)
        asked.clear()
        page.on("request", lambda r: asked.append(r.url) if "/admin/series" in r.url else None)
        try:
            await page.goto(url + "/ui/#/me")
            await _drawn(page, "me")
            assert [
                (t or "").strip()
                for t in await page.locator(".choice[aria-label=Split] button").all_text_contents()
            ] == ["Total", "By model"]
            await page.click("button[data-range='7d']")
            await _drawn(page, "me")
            assert asked[-1].endswith("/admin/series?range=7d&split=total&scope=me")
            await shot(page, f"charts-me-7d-390-{theme}")
            mine = await _api(url, alice_key, "/admin/series?range=7d")
            everyone = await _api(url, admin_key, "/admin/series?range=7d")
            assert 0 < sum(mine["groups"][0]["requests"]) < sum(everyone["groups"][0]["requests"])
            requests_card = page.locator(".chart-card").first
            await requests_card.locator("details summary").click()
            column = requests_card.locator("details tbody tr td:nth-child(2) .keep")
            in_table = sum(int(re.sub(r"\D", "", t)) for t in await column.all_text_contents())
            assert in_table == sum(mine["groups"][0]["requests"])
            fit = cast(dict[str, Any], await page.evaluate(FIT))
            assert fit["page"] <= 0, fit
            assert len(fit["charts"]) == 3 and all(c["over"] <= 1 for c in fit["charts"]), fit
            assert all(c["width"] > 250 for c in fit["charts"]), fit  # (drawn, not squeezed)
            tip = await page.evaluate(TIP_AT, 0.97)
            assert tip is None or (tip["left"] >= 0 and tip["right"] <= 390), tip
            assert refused == []
        finally:
            await context.close()
