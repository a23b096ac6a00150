"""The dashboard fits every screen, measured in the browser, and its forms lose nothing.

Every page at 1280, 1024 and 390 px, light and dark, with a 64-character user name, a
1,000-character model name and key previews in its tables: no word is broken inside
itself (each word's line boxes, from Range.getClientRects), the page never scrolls
sideways, every row's buttons can be reached (on a phone without scrolling any box
sideways), a cut value is whole in its title, on focus and when copied, and the phone's
header stays one line; the charts (by model, the long name in the legend) fit their
cards and the screen. A screenshot of each page is saved (the folder is printed).

A key's Change form sends only the field changed, and everything else about the key
stays as it was, read back through the admin API; so does a user's; a key is created
with every field at once."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.keyrows import Creator
from aigateway.db.store import Store
from aigateway.records import Budget, KeyLimits, Price, UsageRecord
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .browser import Theme, chromium, policy_refusals, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key

LONG_USER = "Maximiliana-Alexandrina-Konstantinopolitanische-Verwaltungsamt-X"
LONG_MODEL = ("model-with-a-very-long-name-" * 36)[:993] + ":latest"
assert len(LONG_USER) == 64 and len(LONG_MODEL) == 1000
# The longest alias name a namespace and a model allow (80 characters each).
LONG_ALIAS = ("alias-namespace-" * 5)[:80] + "/" + ("gpt-4o-mini-compatible-" * 4)[:80]
PAGES = ("overview", "now", "keys", "users", "models", "usage", "me", "playground")
USER_PAGES = ("models", "usage", "me", "mykeys", "playground")
SIZES: tuple[tuple[int, Theme], ...] = (
    (1280, "light"),
    (1280, "dark"),
    (1024, "light"),
    (1024, "dark"),
    (390, "light"),
    (390, "dark"),
)
CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'

# In the page: what does not fit. Words split over two line boxes in any table cell,
# the page's and each table box's sideways scroll, and each row button that cannot be
# reached (scrolled into view, the point at its centre is not the button).
MEASURE = """
() => {
  const broken = [];
  for (const cell of document.querySelectorAll("#view th, #view td")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = new Set(
          [...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)),
        );
        if (lines.size > 1) broken.push(m[0].slice(0, 40));
      }
    }
  }
  const boxes = [...document.querySelectorAll("#view .table-wrap")]
    .filter((b) => b.scrollWidth > b.clientWidth + 1).length;
  const unreachable = [];
  const offscreen = [];
  for (const button of document.querySelectorAll("#view tbody button")) {
    const before = button.getBoundingClientRect();
    if (before.left < 0 || before.right > innerWidth) offscreen.push(button.textContent);
    button.scrollIntoView({ block: "center", inline: "center" });
    const r = button.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (!hit || !(hit === button || button.contains(hit))) unreachable.push(button.textContent);
  }
  // Every cut value (names, key previews, models) is whole in its title, and can be
  // focused when it is cut.
  const cuts = [...document.querySelectorAll("#view .cut")];
  const untitled = cuts.filter((b) => b.title !== b.textContent).map((b) => b.textContent);
  const unfocusable = cuts
    .filter((b) => b.scrollWidth > b.clientWidth + 1 && b.tabIndex !== 0)
    .map((b) => b.textContent.slice(0, 40));
  scrollTo(0, 0);
  for (const box of document.querySelectorAll("#view .table-wrap")) box.scrollLeft = 0;
  return {
    broken,
    pageWidth: document.scrollingElement.scrollWidth,
    innerWidth,
    boxes,
    untitled,
    unfocusable,
    cutCount: cuts.filter((b) => b.scrollWidth > b.clientWidth + 1).length,
    unreachable,
    offscreen,
    buttons: document.querySelectorAll("#view tbody button").length,
    // each chart's canvas within its card, each legend entry within the screen
    charts: [...document.querySelectorAll("#view .chart-card")].map((card) => {
      const canvas = card.querySelector(".chart-box[data-drawn] canvas");
      if (!canvas) return "not drawn";
      const c = card.getBoundingClientRect();
      const r = canvas.getBoundingClientRect();
      return r.left >= c.left - 1 && r.right <= c.right + 1 ? "fits" : "overflows";
    }),
    legendOut: [...document.querySelectorAll("#view .chart-legend button")]
      .filter((b) => b.getBoundingClientRect().right > innerWidth).map((b) => b.title.slice(0, 40)),
    header: document.querySelector("header.bar").getBoundingClientRect().height,
  };
}
"""

# The page's charts drawn, none of them loading.
DRAWN = """
() => !document.querySelector("#view .usage-charts[aria-busy]")
  && document.querySelectorAll("#view .chart-box[data-drawn] canvas").length === 3
"""

# A cut value: shown with an ellipsis, whole in its title; focusable, and whole when
# focused; whole when copied (a selection of it gives all of it).
CUT = """
(text) => {
  const box = [...document.querySelectorAll("#view .cut")].find((b) => b.textContent === text);
  if (!box) return null;
  const style = getComputedStyle(box);
  const result = {
    cut: box.scrollWidth > box.clientWidth,
    ellipsis: style.textOverflow === "ellipsis",
    title: box.title === text,
    focusable: box.tabIndex === 0,
    oneLine: box.getBoundingClientRect().height < 2 * parseFloat(style.lineHeight || "20"),
  };
  const selection = getSelection();
  selection.selectAllChildren(box);
  result.copied = selection.toString() === text;
  selection.removeAllRanges();
  box.focus();
  result.wholeOnFocus = document.activeElement === box && box.scrollWidth <= box.clientWidth + 1;
  box.blur();
  return result;
}
"""


@pytest.fixture
async def dashboard(
    aiohttp_server: AiohttpServer, settings: Settings, fake: FakeOllama
) -> TestServer:
    fake.extra_models.append(LONG_MODEL)
    # (self-service on: a user's My keys is measured too; the response cache on: the
    # Overview's cache figures and its Clear button too)
    on = dataclasses.replace(settings, self_service_keys=3, cache_bytes=1024**2)
    server: TestServer = await aiohttp_server(create_app(on))
    return server


async def _with_history(dashboard: TestServer, db_path: str) -> tuple[str, str]:
    """An admin key, a user with a 64-character name whose key has every
    limit, a budget with an alert and an allow-list, and usage of a 1,000-character
    model (a record as the usage writer makes it, priced by a long pattern) beside real
    requests. The two keys."""
    admin_key = await make_key(db_path, "root", "ops", "admin")
    store = await Store.open(db_path)
    try:
        record, secret = await store.create_key(
            LONG_USER,
            "build-server-in-the-basement",
            "user",
            time.time() + 30 * 86400,
            KeyLimits(rpm=60, rph=1000, tokens_per_day=100_000, max_concurrent=4),
            ["llama3*", "qwen2.5:0.5b"],
            Budget(25_000_000, "monthly", 80),
        )
        # (a class not normal: the Keys and Users lists mark it)
        await store.update_user(LONG_USER, {"email": "ops@example.org", "priority": "low"})
        # (the Models page's Prices table: a long pattern, every part priced)
        await store.set_price(Price(LONG_MODEL[:199] + "*", 1_000, 150_000, 400_000, 25))
        long_model_use = UsageRecord(
            ts=time.time() - 60,
            key_id=record.id,
            user=LONG_USER,
            key_name=record.name,
            method="POST",
            route="/api/chat",
            model=LONG_MODEL,
            status=200,
            prompt_tokens=12,
            completion_tokens=34,
            duration_ms=120.0,
            ttfb_ms=40.0,
            bytes_in=100,
            bytes_out=200,
            client_gone=False,
        )
        await store.insert_usage([long_model_use])
        # (a key it made itself, for its My keys: a name as long as a name may be)
        await store.create_key(
            LONG_USER, "k" * 64, "user", record.expires_at, record.limits, ["llama3.1*"],
            Budget(1_000_000, "total"), creator=Creator(record.id, 3, lambda _now: None),
        )  # fmt: skip
        # (the Models page's Aliases: everyone's with a long name, the long user's own)
        await store.set_alias(LONG_ALIAS, "llama3.2")
        await store.set_alias("gpt-4o-mini", "llama3.2", "user", LONG_USER)
        await store.set_alias("o1", "llama3.2", "key", str(record.id))
    finally:
        await store.close()
    url = str(dashboard.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for key in (admin_key, secret):
            async with session.post(
                url + "/api/chat", data=CHAT, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                assert resp.status == 200
    assert await dashboard.app[RELAY].usage.flush()
    return admin_key, secret


async def _show(page: Page, url: str, name: str) -> None:
    await page.goto(f"{url}/ui/#/{name}")
    # (the page's own answers all in: a hash change starts no navigation to wait for)
    await page.wait_for_selector(f"#view-{name}[aria-busy=false] h1")
    await page.evaluate(  # (two frames: what was laid out last has been measured)
        "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
    )


async def _held_in_flight(url: str, db_path: str) -> aiohttp.ClientSession:
    """A request of another user with a 64-character name, by a key with a long name,
    held in flight (Now lists it) until the returned session closes."""
    key = await make_key(db_path, LONG_USER[:-1] + "N", "now-" + "x" * 40)
    session = aiohttp.ClientSession()
    body = {"model": "stall", "messages": [{"role": "user", "content": "hi"}]}
    try:
        resp = await session.post(
            url + "/api/chat", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status == 200, await resp.text()
        await resp.content.readline()  # (answering: its tokens so far are counted)
    except BaseException:
        await session.close()
        raise
    return session


async def test_every_page_fits_every_screen_in_both_themes(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key, user_key = await _with_history(dashboard, db_path)
    url = str(dashboard.make_url("")).rstrip("/")
    held = await _held_in_flight(url, db_path)
    cut_seen: dict[str, list[int]] = {LONG_USER: [], LONG_MODEL: []}
    try:
        await _every_page_fits(browser, url, admin_key, user_key, cut_seen)
    finally:
        await held.close()
    # Each long value was cut (and checked) somewhere at every width.
    for text, widths in cut_seen.items():
        assert set(widths) == {1280, 1024, 390}, (text[:20], widths)


async def _every_page_fits(
    browser: Browser, url: str, admin_key: str, user_key: str, cut_seen: dict[str, list[int]]
) -> None:
    # Every page as an admin; a user's own pages (its name long) at each width.
    runs: list[tuple[str, str, int, Theme, tuple[str, ...]]]
    runs = [(admin_key, "admin", width, theme, PAGES) for width, theme in SIZES] + [
        (user_key, "user", width, theme, USER_PAGES) for width, theme in SIZES[::2]
    ]
    # (a user's own pages in the other theme: My keys, which only a user has)
    runs += [(user_key, "user", width, theme, ("mykeys",)) for width, theme in SIZES[1::2]]
    for key, role, width, theme, pages in runs:
        context, page = await signed_in(browser, url, key, width, theme)
        refused = policy_refusals(page)
        try:
            for name in pages:
                await _show(page, url, name)
                if name == "keys":  # with a row's Change form open below it
                    row = page.locator("tr", has_text="build-server-in-the-basement")
                    await row.locator("button[data-action=edit]").click()
                    await page.wait_for_selector("#edit-key")
                if name == "overview":  # the charts by model: the long name in the legend
                    await page.click("button[data-split='model']")
                    await page.wait_for_selector(
                        f".chart-legend button[title='{LONG_MODEL}']", state="attached"
                    )
                if name in ("overview", "me"):
                    await page.wait_for_function(DRAWN)
                where = f"{name} at {width} px, {theme}, as {role}"
                found = cast(dict[str, Any], await page.evaluate(MEASURE))
                await shot(page, f"{name}-{width}-{theme}" + ("-user" if role == "user" else ""))
                assert found["broken"] == [], f"words broken on {where}: {found['broken']}"
                assert found["pageWidth"] <= found["innerWidth"], f"{where} scrolls sideways"
                assert found["unreachable"] == [], f"buttons out of reach on {where}"
                assert found["untitled"] == [] and found["unfocusable"] == [], (
                    where,
                    found["unfocusable"],
                )
                # (one line at every width, even with the user's long name in it)
                assert found["header"] <= 64, f"the header takes {found['header']} px, {where}"
                if name == "overview":  # (its cache figures were measured with the rest)
                    assert await page.locator("#cache .stat, #cache-clear").count() == 6, where
                if name in ("overview", "me"):
                    assert found["charts"] == ["fits"] * 3, (where, found["charts"])
                    assert found["legendOut"] == [], (where, found["legendOut"])
                if width < 600:
                    assert found["boxes"] == 0 and found["offscreen"] == [], where
                if (name in ("keys", "users", "models", "now") and role == "admin") or (
                    name == "mykeys"
                ):
                    assert found["buttons"] > 0, where  # (the rows' actions were measured)
                for text, widths in cut_seen.items():
                    shown = await page.evaluate(CUT, text)
                    if shown is None or not shown["cut"]:
                        continue
                    assert all(shown.values()), f"{text[:20]}… on {where}: {shown}"
                    widths.append(width)
            if (
                width < 600 and role == "admin"
            ):  # the pages behind the phone's Menu button, by keyboard too
                await page.click("#menu")
                await page.wait_for_selector("#nav a[data-view=usage]")
                await shot(page, f"menu-{width}-{theme}")
                await page.keyboard.press("Escape")
                await page.wait_for_selector("#nav", state="hidden")
                await page.focus("#menu")
                await page.keyboard.press("Enter")
                await page.click("#nav a[data-view=usage]")
                await page.wait_for_selector("#view-usage h1")
                await page.wait_for_selector("#nav", state="hidden")
            # The sign-in page, after signing out.
            await page.click("#signout")
            await page.wait_for_selector("#signin-key")
            found = cast(dict[str, Any], await page.evaluate(MEASURE))
            assert found["pageWidth"] <= found["innerWidth"] and found["header"] <= 64
            await shot(page, f"signin-{width}-{theme}")
            assert refused == [], refused
        finally:
            await context.close()


async def _api(url: str, key: str, method: str, path: str, body: object = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url + path, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def test_a_change_form_sends_only_what_changed_and_keeps_the_rest(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(dashboard.make_url("")).rstrip("/")
    made = await _api(
        url,
        admin_key,
        "POST",
        "/admin/keys",
        {
            "user": "ines",
            "name": "ci",
            "rpm": 30,
            "rph": 500,
            "tokens_per_day": 20_000,
            "max_concurrent": 3,
            "models": ["llama3*", "qwen2.5:0.5b"],
            "expires_at": 4073500800 + 13 * 3600 + 45 * 60,  # 2099-01-31T13:45:00Z
            "budget": {"amount": 7_500_000, "period": "weekly", "alert_percent": 75},
        },
    )
    await _api(
        url,
        admin_key,
        "PATCH",
        "/admin/users/ines",
        {
            "email": "ines@example.org",
            "budget": {"amount": 40_000_000, "period": "monthly", "alert_percent": 90},
        },
    )
    # (since=0: their refusals counted over a fixed period, as every other field is fixed)
    before = await _api(url, admin_key, "GET", f"/admin/keys/{made['id']}?since=0")
    user_before = await _api(url, admin_key, "GET", "/admin/users/ines?since=0")
    context, page = await signed_in(browser, url, admin_key)
    sent: list[Any] = []
    page.on(
        "request",
        lambda r: sent.append(orjson.loads(r.post_data or "null")) if r.method == "PATCH" else None,
    )
    try:
        await _show(page, url, "keys")
        await page.locator("tr", has_text="ines").locator("button[data-action=edit]").click()
        # The form shows each value as it is: the expiry with its time of day, in UTC.
        assert await page.input_value("#edit-key-expires_at") == "2099-01-31T13:45"
        assert await page.text_content("label[for=edit-key-expires_at]") == "Expires (UTC)"
        assert await page.text_content("label[for=edit-key-rpm]") == "Requests per minute"
        assert await page.input_value("#edit-key-budget_alert") == "75"
        # A mistake is named under its field, in people's words, and nothing is sent.
        await page.fill("#edit-key-rpm", "fast")
        await page.click("#edit-key button[type=submit]")
        error = page.locator("#edit-key-rpm-error")
        assert "Requests per minute" in (await error.text_content() or "")
        await page.fill("#edit-key-rpm", "999999999999999")
        await page.click("#edit-key button[type=submit]")
        assert "at most" in (await error.text_content() or "")
        # One only the API finds goes under its field too (not at the top of the page).
        await page.fill("#edit-key-rpm", "30")
        await page.fill("#edit-key-models", "llama3*, not a pattern")
        await page.click("#edit-key button[type=submit]")
        await page.wait_for_selector("#edit-key-models-error:has-text('not a model name')")
        await shot(page, "keys-field-error")
        assert sent == [{"models": ["llama3*", "not a pattern"]}]  # (the rest unchanged)
        await page.fill("#edit-key-models", "llama3*, qwen2.5:0.5b")
        # Cancel closes the form, back to its button; nothing was saved.
        await page.click("#edit-key button:has-text('Cancel')")
        await page.wait_for_selector("#edit-key", state="detached")
        assert await page.evaluate("document.activeElement.dataset.action") == "edit"
        await page.locator("tr", has_text="ines").locator("button[data-action=edit]").click()
        # Change only the rate limit.
        await page.fill("#edit-key-rpm", "45")
        await page.click("#edit-key button[type=submit]")
        await page.wait_for_selector("tr:has-text('ines') td:has-text('/45 a minute')")
        after = await _api(url, admin_key, "GET", f"/admin/keys/{made['id']}?since=0")
        assert after == {**before, "rpm": 45}
        assert sent[-1] == {"rpm": 45}

        # A user's email changed: its budget keeps its alert; then the alert alone.
        await _show(page, url, "users")
        await page.locator("tr", has_text="ines").locator("button[data-action=edit]").click()
        assert await page.input_value("#edit-user-budget_alert") == "90"
        await page.fill("#edit-user-email", "ines@example.net")
        await page.click("#edit-user button[type=submit]")
        await page.wait_for_selector("td:has-text('ines@example.net')")
        assert sent[-1] == {"email": "ines@example.net"}
        user_after = await _api(url, admin_key, "GET", "/admin/users/ines?since=0")
        assert user_after == {**user_before, "email": "ines@example.net"}
        await page.locator("tr", has_text="ines").locator("button[data-action=edit]").click()
        await page.fill("#edit-user-budget_alert", "50")
        await page.click("#edit-user button[type=submit]")
        await page.wait_for_selector("td:has-text('alert at 50%')")
        await shot(page, "users-changed")
        assert sent[-1] == {
            "budget": {"amount": 40_000_000, "period": "monthly", "alert_percent": 50}
        }

        # A key created with every field at once: its expiry keeps its time of day.
        await _show(page, url, "keys")
        await page.fill("#create-key-user", "ines")
        await page.fill("#create-key-name", "laptop")
        await page.click("#create-key summary")
        await page.fill("#create-key-rph", "120")
        await page.fill("#create-key-expires_at", "2099-02-28T08:30")
        await page.fill("#create-key-budget_amount", "5")
        await page.select_option("#create-key-budget_period", "daily")
        await page.fill("#create-key-budget_alert", "70")
        await page.click("#create-key button[type=submit]")
        await page.wait_for_selector("#new-key-value")
        keys = (await _api(url, admin_key, "GET", "/admin/keys"))["keys"]
        (laptop,) = [k for k in keys if k["key_name"] == "laptop"]
        assert laptop["rph"] == 120 and laptop["rpm"] is None
        assert laptop["expires"] == "2099-02-28T08:30:00Z"
        assert laptop["budget"] == {"amount": 5_000_000, "period": "daily", "alert_percent": 70}
        assert page.dialogs == []  # type: ignore[attr-defined]  # (no prompt, no confirm)
        await shot(page, "keys-created")
    finally:
        await context.close()
