"""The dashboard in a real browser (Debian's Chromium, driven by Playwright), and its
sessions and headers as an attacker would try them.

Screenshots of each page land in test-artifacts/screenshots/ (tests/browser.py) for a
person to look at; test_dashboard_fit.py measures the layout on every page."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app
from aigateway.db.store import Store
from aigateway.records import Price
from aigateway.relay.state import RELAY
from aigateway.testing.fake_ollama import FakeOllama

from .browser import chromium, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key
from .helpers import eventually

CHAT = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi"}]}'
XSS = "<img src=x onerror=alert(1)>"

# The tests that drive Chromium (the `browser` fixture) are marked and skipped where it
# is missing by conftest.py, except in CI (.ci/run installs it); the rest run anywhere.


@pytest.fixture
async def dashboard(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    fake: FakeOllama,
) -> TestServer:
    fake.extra_models.append("stall")
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


async def test_an_admin_signs_in_creates_a_key_once_changes_and_revokes_it(
    browser: Browser,
    dashboard: TestServer,
    db_path: str,
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    user_key = await make_key(db_path, XSS, "laptop")  # a hostile user name
    url = str(dashboard.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for key in (admin_key, user_key, user_key):
            async with session.post(
                url + "/api/chat", data=CHAT, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                assert resp.status == 200
    assert await dashboard.app[RELAY].usage.flush()

    context, page = await signed_in(browser, url, admin_key)
    # The session is a cookie the page's script cannot read; the key is nowhere.
    (cookie,) = await context.cookies()
    assert cookie["name"] == "aigateway_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    stored = await page.evaluate("JSON.stringify(localStorage) + document.cookie")
    assert admin_key not in stored and "aigateway_session" not in stored
    # Overview: figures and charts of the requests just made (drawn on canvases).
    await page.wait_for_selector("#view-overview .chart-box[data-drawn] canvas")
    assert "Last 24 hours" in cast(str, await page.text_content("#view-overview"))
    assert XSS in cast(str, await page.text_content("#view-overview"))  # shown as text
    # Percentiles from the hourly sums are marked as estimates, and say how close.
    p50 = page.locator("#view-overview .stat", has_text="p50 / p95 ms").first
    assert (await p50.locator(".value").text_content() or "").startswith("≈ ")
    assert "±19%" in (await p50.locator(".label").get_attribute("title") or "")
    await shot(page, "overview")

    await page.click("#nav a[data-view=keys]")
    await page.wait_for_selector("#create-key")
    assert XSS in cast(str, await page.text_content("#view-keys"))
    await page.fill("#create-key-user", "dora")
    await page.fill("#create-key-name", "phone")
    await page.fill("#create-key-rpm", "20")
    await page.click("#create-key button[type=submit]")
    secret = (await page.text_content("#new-key-value")) or ""
    assert re.fullmatch(r"aig_[A-Za-z0-9_-]{43}", secret)
    await shot(page, "keys-new-key")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/tags", headers={"Authorization": f"Bearer {secret}"}) as resp,
    ):
        assert resp.status == 200  # the key shown works
    await page.click("#new-key button:has-text('I have stored it')")
    assert await page.locator("#new-key-value").count() == 0  # never shown again
    await page.reload()
    await page.wait_for_selector("#create-key")
    assert secret not in (await page.content())

    store = await Store.open(db_path)
    try:
        made = await store.find_active_key("dora", "phone")
        assert made.limits.rpm == 20
        # Change the limit through the row's Change form (no dialog), then the rest.
        await page.locator("tr", has_text="dora").locator("button[data-action=edit]").click()
        await page.fill("#edit-key-rpm", "45")
        await page.click("#edit-key button[type=submit]")
        await page.wait_for_selector("tr:has-text('dora') td:has-text('/45 a minute')")
        assert (await store.get_key(made.id)).limits.rpm == 45
        # Allow-list, token quota, expiry (a time of day, in UTC), own budget and alert.
        await page.locator("tr", has_text="dora").locator("button[data-action=edit]").click()
        await page.fill("#edit-key-models", "llama3*, qwen2.5:0.5b")
        await page.fill("#edit-key-tokens_per_day", "1000")
        await page.fill("#edit-key-expires_at", "2099-01-31T13:45")
        await page.fill("#edit-key-budget_amount", "1.5")
        await page.select_option("#edit-key-budget_period", "daily")
        await page.fill("#edit-key-budget_alert", "80")
        await page.click("#edit-key button[type=submit]")
        await page.wait_for_selector("td:has-text('1.500000 daily, alert at 80%')")
        changed = await store.get_key(made.id)
        assert changed.models == ("llama3*", "qwen2.5:0.5b")
        assert changed.limits.tokens_per_day == 1000 and changed.limits.rpm == 45
        assert changed.expires_at == 4073500800.0 + 13 * 3600 + 45 * 60  # 2099-01-31T13:45Z
        assert changed.budget is not None and changed.budget.amount == 1_500_000
        assert changed.budget.alert == 80
        await page.wait_for_selector("tr:has-text('dora') td:has-text('2099-01-31 13:45')")
        assert "tokens today" in cast(str, await page.text_content("tr:has-text('dora')"))
        page.once("dialog", lambda d: d.accept())
        await page.locator("tr", has_text="dora").locator("button[data-action=revoke]").click()
        await expect(page.locator("tr", has_text="dora")).to_have_count(0)  # active ones shown
        await page.select_option("#key-status", "revoked")
        await page.wait_for_selector("tr:has-text('dora') td:has-text('revoked')")
        assert (await store.get_key(made.id)).revoked
    finally:
        await store.close()
    # Usage: the records, filtered, with breakdowns and a download of what is shown.
    await page.click("#nav a[data-view=usage]")
    await page.wait_for_selector("#usage-results table")
    await page.fill("#f-user", XSS)
    await page.click("#usage-filters button[type=submit]")
    await expect(page.locator("#usage-results tbody tr")).to_have_count(2)
    assert XSS in cast(str, await page.text_content("#usage-breakdown"))
    async with page.expect_download() as download:
        await page.click("#usage-results a:has-text('Export CSV')")
    exported = Path(await (await download.value).path()).read_text()
    assert len(exported.strip().splitlines()) == 3  # a header and the user's two records
    await shot(page, "usage")
    # Models: what Ollama has, and a price set from the page.
    await page.click("#nav a[data-view=models]")
    await (
        page.locator("tr", has_text="llama3.2:latest").locator("button[data-action=price]").click()
    )
    await page.fill("#price-pattern", "llama3*")
    await page.fill("#price-per_million_output", "0.40")
    await page.click("#price-form button[type=submit]")
    await page.wait_for_selector("td:has-text('0.400000 /M out')")
    await shot(page, "models")

    # Users: a budget set, the spend shown, the user disabled (its key stops at once).
    await page.click("#nav a[data-view=users]")
    await page.locator("tr", has_text=XSS).locator("button[data-action=edit]").click()
    await page.fill("#edit-user-budget_amount", "2.5")
    await page.select_option("#edit-user-budget_period", "weekly")
    await page.click("#edit-user button[type=submit]")
    await page.wait_for_selector("td:has-text('2.500000 weekly')")
    await page.locator("tr", has_text=XSS).locator("button[data-action=spend]").click()
    await page.wait_for_selector("#budget-report:has-text('2.500000')")
    page.once("dialog", lambda d: d.accept())
    await page.locator("tr", has_text=XSS).locator("button[data-action=toggle]").click()
    await page.wait_for_selector("tr:has-text('onerror') td:has-text('disabled')")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/tags", headers={"Authorization": f"Bearer {user_key}"}) as resp,
    ):
        assert resp.status == 401
    await shot(page, "users")

    # Only the page's own questions were asked: no alert(1) ever ran (the XSS name).
    assert [d.split(" ")[0] for d in page.dialogs] == [  # type: ignore[attr-defined]
        "Revoke",
        "Disable",
    ]
    await context.close()


async def test_a_user_sees_its_own_pages_only_and_uses_the_playground(
    browser: Browser,
    dashboard: TestServer,
    db_path: str,
    fake: FakeOllama,
) -> None:
    key = await make_key(db_path, "erin", "tablet")
    url = str(dashboard.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, key)
    links = await page.locator("#nav a").all_text_contents()
    assert links == ["Models", "Usage", "My usage", "Playground"]
    await page.wait_for_selector("#view-me")
    assert "erin / tablet" in cast(str, await page.text_content("#view-me"))
    await shot(page, "my-usage")
    # Admin pages by their address: the admin API refuses them.
    await page.goto(url + "/ui/#/keys")
    await page.wait_for_selector("#view-keys .error")
    assert "needs an admin key" in cast(str, await page.text_content("#view-keys"))
    async with (
        aiohttp.ClientSession(
            cookies={c["name"]: c["value"] for c in await context.cookies()}
        ) as session,
        session.get(url + "/admin/keys") as resp,
    ):
        assert resp.status == 403

    # The playground: a streamed answer, stopped midway, which stops Ollama.
    await page.goto(url + "/ui/#/playground")
    await page.wait_for_selector("#pg-model")
    await page.select_option("#pg-model", "stall")
    await page.fill("#pg-prompt", "hold on")
    await page.click("#pg-send")
    await expect(page.locator("#pg-answer")).not_to_be_empty()
    await shot(page, "playground")
    await page.click("#pg-stop")
    await eventually(lambda: any(path == "/api/chat" for path, _ in fake.abandoned))
    assert "Stopped." in cast(str, await page.text_content("#view-playground"))
    # A whole answer, with its figures.
    await page.select_option("#pg-model", "llama3.2:latest")
    await page.click("#pg-send")
    await page.wait_for_selector("#pg-figures:has-text('tokens/s')")
    assert "first token after" in cast(str, await page.text_content("#pg-figures"))

    # Phone width, and dark mode remembered across a reload.
    await page.set_viewport_size({"width": 390, "height": 800})
    await page.click("#theme")
    await page.reload()
    await page.wait_for_selector("#menu")  # (the pages are behind it on a phone)
    assert await page.evaluate("document.documentElement.dataset.theme") in ("dark", "light")
    wide = await page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 400  # nothing forces a phone to scroll sideways
    await shot(page, "phone-dark")
    await context.close()


async def test_sessions_end_and_cannot_be_forged_or_ridden(
    dashboard: TestServer, db_path: str
) -> None:
    """Without a browser: the cookie's attributes, sign-out, revocation ending the
    session within a second, cross-site requests refused, and the page's headers."""
    key = await make_key(db_path, "fay", "pc")
    url = str(dashboard.make_url("")).rstrip("/")
    page = await _get(url + "/ui/")
    assert page.headers["X-Frame-Options"] == "DENY"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    same = {"X-Requested-With": "aigateway"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        # Signing in needs the page's own header (no login from another site's form).
        async with session.post(url + "/ui/session", json={"key": key}) as resp:
            assert resp.status == 403
        async with session.post(
            url + "/ui/session", json={"key": "aig_" + "x" * 43}, headers=same
        ) as resp:
            assert resp.status == 401
        async with session.post(url + "/ui/session", json={"key": key}, headers=same) as resp:
            assert resp.status == 200
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with session.get(url + "/admin/me") as resp:
            assert resp.status == 200
        # A state change by cookie without the header, or from another origin: refused.
        chat = {"model": "llama3.2", "messages": [], "stream": False}
        async with session.post(url + "/api/chat", json=chat) as resp:
            assert resp.status == 403
        async with session.post(
            url + "/api/chat", json=chat, headers={**same, "Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with session.post(url + "/api/chat", json=chat, headers=same) as resp:
            assert resp.status == 200
        # A bad key header is never passed over for the cookie.
        async with session.get(url + "/admin/me", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        # Revoking the key ends its sessions at once: their rows go with the revocation.
        store = await Store.open(db_path)
        try:
            await store.revoke_key("fay", "pc")
        finally:
            await store.close()
        async with session.get(url + "/admin/me") as resp:
            assert resp.status == 401
            assert "the session has ended" in (await resp.json())["error"]

    # A cookie that cannot be a session id (here an injection attempt) is refused.
    async with (
        aiohttp.ClientSession(cookies={"aigateway_session": "x' OR 1=1 --"}) as session,
        session.get(url + "/admin/me") as resp,
    ):
        assert resp.status == 401

    # Sign-out ends the session on the server, not only in the browser.
    key2 = await make_key(db_path, "fay", "laptop")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "/ui/session", json={"key": key2}, headers=same) as resp:
            stolen = resp.cookies["aigateway_session"].value
        async with session.delete(url + "/ui/session", headers=same) as resp:
            assert resp.status == 200
    async with (
        aiohttp.ClientSession(cookies={"aigateway_session": stolen}) as session,
        session.get(url + "/admin/me") as resp,
    ):
        assert resp.status == 401


async def _get(url: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        await resp.read()
        return resp


async def test_with_ui_path_off_there_is_no_dashboard_and_no_cookie_sign_in(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
) -> None:
    key = await make_key(db_path, "gil", "pc")
    on = await aiohttp_server(create_app(settings))
    url = str(on.make_url("")).rstrip("/")
    same = {"X-Requested-With": "aigateway"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/ui/session", json={"key": key}, headers=same) as resp,
    ):
        session_id = resp.cookies["aigateway_session"].value
    off = await aiohttp_server(create_app(replace(settings, ui_path=None)))
    url = str(off.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(cookies={"aigateway_session": session_id}) as session:
        for path in ("/ui/", "/ui/static/app.js"):
            async with session.get(url + path) as resp:
                assert resp.status == 404
        async with session.get(url + "/admin/me") as resp:
            assert resp.status == 401  # the cookie means nothing with the dashboard off


async def test_the_api_docs_render_offline_under_their_policy(
    browser: Browser,
    dashboard: TestServer,
) -> None:
    url = str(dashboard.make_url("")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    outside: list[str] = []  # requests to anywhere but the gateway that went through
    page.on(
        "requestfinished",
        lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None,
    )
    await page.goto(url + "/docs")
    await page.wait_for_selector(".opblock-tag-section")
    assert "Anthropic-compatible" in cast(str, await page.text_content("#swagger"))
    await shot(page, "docs-swagger")
    await page.goto(url + "/redoc")
    await page.locator("h1", has_text="aigateway").wait_for()
    await page.locator("h2", has_text="Relayed to Ollama's /api/generate").first.wait_for()
    await shot(page, "docs-redoc")
    # The one thing the policy stops: ReDoc's own logo, which it fetches from its
    # publisher's CDN (it hides the image when it cannot). Nothing leaves the machine.
    assert [m for m in refused if "cdn.redoc.ly/redoc/logo-mini.svg" not in m] == []
    assert outside == []
    await context.close()


@pytest.mark.parametrize(("setting", "secure"), [("auto", False), ("true", True), ("false", False)])
async def test_the_cookie_is_secure_as_set_behind_a_tls_proxy(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    setting: str,
    secure: bool,
) -> None:
    """Over plain HTTP (a proxy in front terminating TLS): Secure only when told."""
    key = await make_key(db_path, "hal", "pc")
    server = await aiohttp_server(create_app(replace(settings, session_cookie_secure=setting)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(server.make_url("/ui/session")),
            json={"key": key},
            headers={"X-Requested-With": "aigateway"},
        ) as resp,
    ):
        assert resp.status == 200
        assert ("Secure" in resp.headers["Set-Cookie"]) is secure


async def test_the_overview_shows_each_upstream_with_several(
    browser: Browser,
    aiohttp_server: AiohttpServer,
    db_path: str,
) -> None:
    """Two Ollamas, one of them gone: the Overview's table says which, and why, as text."""
    alive = FakeOllama(models=["llama3.2:latest"], loaded=["llama3.2"])
    live = await aiohttp_server(alive.app())
    gone = await aiohttp_server(FakeOllama().app())
    gone_url = str(gone.make_url("")).rstrip("/")
    await gone.close()
    settings = Settings(
        ollama_base_url=f"{str(live.make_url('')).rstrip('/')},{gone_url}",
        token_db_path=db_path,
        upstream_check_interval=0.2,
    )
    server = await aiohttp_server(create_app(settings))
    admin_key = await make_key(db_path, "root", "ops", "admin")
    context, page = await signed_in(browser, str(server.make_url("")).rstrip("/"), admin_key)
    try:
        await page.wait_for_selector("text=Upstreams")
        rows = await page.locator("table").first.locator("tbody tr").all_inner_texts()
        assert any("ollama1" in r and "up" in r and "llama3.2" in r for r in rows), rows
        assert any("ollama2" in r and "out: cannot reach" in r for r in rows), rows
        # The first line names each upstream, and each one's loaded models.
        state = page.locator("#ollama .stat", has_text="Upstreams").locator(".value")
        assert (await state.text_content() or "").startswith("ollama1 up, ollama2 out: cannot")
        loaded = page.locator("#ollama .stat", has_text="Models loaded").locator(".value")
        assert await loaded.text_content() == "ollama1: llama3.2:latest; ollama2: none"
        await shot(page, "overview-upstreams")
    finally:
        await context.close()


async def test_the_playground_shows_the_cost_the_gateway_charged(
    browser: Browser,
    dashboard: TestServer,
    db_path: str,
) -> None:
    """A model priced per request, per token and per second, at prices whose nano-unit
    cost is not a whole micro-unit: the playground's cost is what the usage record holds
    (rounded as the gateway rounds), on a desktop and a phone, light and dark."""
    store = await Store.open(db_path)
    try:
        await store.set_price(Price("llama3*", 1_234, 333_333, 777_777, 4_321))
    finally:
        await store.close()
    key = await make_key(db_path, "pia", "pg")
    url = str(dashboard.make_url("")).rstrip("/")
    for width, theme in ((1280, "light"), (390, "dark")):
        context, page = await signed_in(browser, url, key, width)
        await page.evaluate(f"document.documentElement.dataset.theme = '{theme}'")
        await page.goto(url + "/ui/#/playground")
        await page.wait_for_selector("#pg-model")
        await page.select_option("#pg-model", "llama3.2:latest")
        await page.fill("#pg-prompt", "hi")
        await page.click("#pg-send")
        await page.wait_for_selector("#pg-figures:has-text('cost')")
        shown = re.search(r"cost ([0-9.]+) USD", await page.text_content("#pg-figures") or "")
        assert shown is not None
        assert await dashboard.app[RELAY].usage.flush()
        cookies = {c["name"]: c["value"] for c in await context.cookies()}
        async with (
            aiohttp.ClientSession(cookies=cookies) as session,
            session.get(url + "/admin/usage?limit=1") as resp,
        ):
            (record,) = (await resp.json())["records"]  # (the newest)
        assert record["model"] == "llama3.2:latest"
        assert record["cost"] == round(float(shown[1]) * 1_000_000)
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await shot(page, f"playground-cost-{width}-{theme}")
        await context.close()


async def test_refusals_show_on_the_usage_page_and_in_a_keys_and_users_details(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    eve_key = await make_key(db_path, "eve", "tablet", models=["qwen*"])
    url = str(dashboard.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # a model eve's key may not use
            async with session.post(
                url + "/api/chat", data=CHAT, headers={"Authorization": f"Bearer {eve_key}"}
            ) as resp:
                assert resp.status == 403
        async with session.post(url + "/api/chat", data=CHAT) as resp:  # no key
            assert resp.status == 401
    assert await dashboard.app[RELAY].usage.flush()

    context, page = await signed_in(browser, url, admin_key)
    await page.goto(url + "/ui/#/usage")
    await page.wait_for_selector("#view-usage[aria-busy=false]")
    refused = page.locator("#usage-refused")
    # (the sign-in page's own look for a session counts as a missing key too)
    await expect(refused.locator("h2")).to_have_text(re.compile(r"Refused, for this filter: [45]"))
    await expect(refused.locator("tr", has_text="model_not_allowed")).to_contain_text("3")
    await expect(refused.locator("tr", has_text="missing_key")).to_have_count(1)
    await page.fill("#f-user", "eve")  # the filter's user only
    await page.click("#usage-filters button[type=submit]")
    await expect(refused.locator("h2")).to_have_text("Refused, for this filter: 3")
    await expect(refused.locator("tr", has_text="missing_key")).to_have_count(0)
    await page.fill("#f-model", "llama3.2")  # refusals have no model: not counted by it
    await page.click("#usage-filters button[type=submit]")
    await expect(refused).to_contain_text("not counted by model, route, status")
    await expect(refused.locator("table")).to_have_count(0)
    await shot(page, "usage-refused")

    await page.click("#nav a[data-view=keys]")
    await page.click("button[aria-label='Details of eve/tablet']")
    details = page.locator("#key-details")
    await expect(details.locator("h2")).to_have_text("Refused, last 7 days: 3")
    await expect(details.locator("tr", has_text="model_not_allowed")).to_contain_text("3")
    await page.click("button[aria-label='Details of root/ops']")
    await expect(page.locator("#key-details h2")).to_have_text("Refused, last 7 days: 0")
    await expect(page.locator("#key-details")).to_contain_text("Nothing refused.")

    await page.click("#nav a[data-view=users]")
    await page.click("button[aria-label='Spend of eve']")
    report = page.locator("#budget-report")
    await expect(report.locator("h2")).to_have_text("Refused, last 7 days: 3")
    await expect(report.locator("tr", has_text="model_not_allowed")).to_contain_text("3")
    await context.close()


async def test_prices_are_listed_with_their_parts_and_removed_after_a_yes(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    store = await Store.open(db_path)
    try:
        await store.set_price(Price("*", 1_000, 0, 0, 0))
        await store.set_price(Price("llama3*", 0, 0, 400_000, 0))
    finally:
        await store.close()
    url = str(dashboard.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, admin_key)
    await page.goto(url + "/ui/#/models")
    await page.wait_for_selector("#view-models[aria-busy=false]")
    rows = page.locator("#view-models h2#prices + .table-wrap tbody tr")
    await expect(rows).to_have_count(2)
    star = rows.filter(has=page.locator("td:first-child", has_text=re.compile(r"^\*$")))
    llama = rows.filter(has_text="llama3*")
    # Only the parts that cost something.
    await expect(star.locator("td").nth(1)).to_have_text("0.001000 /a request")
    await expect(llama.locator("td").nth(1)).to_have_text("0.400000 /M out")
    # Remove asks inline; No keeps the price.
    await llama.locator("button[data-action=remove-price]").click()
    await expect(llama).to_contain_text("Remove?")
    await llama.locator("button[data-action=cancel]").click()
    await expect(llama.locator("button[data-action=remove-price]")).to_be_focused()
    await expect(rows).to_have_count(2)
    await shot(page, "prices")
    await llama.locator("button[data-action=remove-price]").click()
    await llama.locator("button[data-action=confirm]").click()
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("0.001000 /a request")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url + "/admin/prices", headers={"Authorization": f"Bearer {admin_key}"}
        ) as resp,
    ):
        assert [p["pattern"] for p in (await resp.json())["prices"]] == ["*"]
    assert page.dialogs == []  # type: ignore[attr-defined]  # (no window.confirm)
    await context.close()


async def test_each_role_lands_on_its_start_page_whoever_signed_out_before(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    user_key = await make_key(db_path, "carol", "laptop")
    url = str(dashboard.make_url("")).rstrip("/")

    async def sign_in_again(key: str) -> None:
        await page.fill("#signin-key", key)
        await page.click("#signin-form button[type=submit]")

    context, page = await signed_in(browser, url, admin_key)
    await page.wait_for_selector("#view-overview[aria-busy=false] h1")  # the admin's start
    await page.click("#nav a[data-view=keys]")
    await page.wait_for_selector("#view-keys[aria-busy=false]")
    await page.click("#signout")
    await page.wait_for_selector("#signin-key")
    assert "#/keys" not in page.url
    await sign_in_again(user_key)  # the next person, a user: My usage, not the Keys page
    await page.wait_for_selector("#view-me[aria-busy=false] h1")
    await expect(page.locator("#view-me h1")).to_have_text("carol / laptop")
    await expect(page.locator("#nav a[aria-current=page]")).to_have_text("My usage")
    await page.click("#nav a[data-view=usage]")
    await page.wait_for_selector("#view-usage[aria-busy=false]")
    await page.click("#signout")
    await page.wait_for_selector("#signin-key")
    await sign_in_again(admin_key)  # and after a user, an admin lands on the Overview
    await page.wait_for_selector("#view-overview[aria-busy=false] h1")
    await expect(page.locator("#nav a[aria-current=page]")).to_have_text("Overview")
    await page.click("#signout")
    await page.wait_for_selector("#signin-key")
    # An admin's page in the address (a link, a bookmark): a user lands on its own page.
    await page.goto(url + "/ui/#/keys")
    await sign_in_again(user_key)
    await page.wait_for_selector("#view-me[aria-busy=false] h1")
    assert page.url.endswith("#/me")
    await context.close()


async def test_the_route_filter_takes_the_path_a_client_calls_as_its_example_says(
    browser: Browser, dashboard: TestServer, db_path: str
) -> None:
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(dashboard.make_url("")).rstrip("/")
    auth = {"Authorization": f"Bearer {admin_key}"}
    openai_chat = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
    async with aiohttp.ClientSession(headers=auth) as session:
        for path, body in (
            ("/api/chat", CHAT),
            ("/api/chat", CHAT),
            ("/v1/chat/completions", openai_chat),
        ):
            async with session.post(url + path, data=body) as resp:
                assert resp.status == 200, path
        async with session.get(url + "/api/tags") as resp:
            assert resp.status == 200
        assert await dashboard.app[RELAY].usage.flush()
        # The API: a route as recorded or as called finds the same records.
        found: dict[str, list[str]] = {}
        for route in ("/chat", "/api/chat", "/v1/chat/completions", "/chat/completions"):
            async with session.get(url + "/admin/usage", params={"route": route}) as resp:
                found[route] = [r["route"] for r in (await resp.json())["records"]]
    assert found["/api/chat"] == found["/chat"] == ["/chat", "/chat"]
    assert found["/v1/chat/completions"] == found["/chat/completions"] == ["/chat/completions"]

    context, page = await signed_in(browser, url, admin_key)
    await page.goto(url + "/ui/#/usage")
    await page.wait_for_selector("#view-usage[aria-busy=false]")
    rows = page.locator("#usage-results tbody tr")
    await rows.first.wait_for()
    # The field's example matches records, and so does an OpenAI-compatible path.
    examples = [await page.get_attribute("#f-route", "placeholder"), "/v1/chat/completions"]
    assert examples[0] == "/api/chat"
    for example, count, shown in ((examples[0], 2, "/chat"), (examples[1], 1, "/chat/completions")):
        await page.fill("#f-route", example or "")
        await page.click("#usage-filters button[type=submit]")
        await expect(rows).to_have_count(count)
        for cell in await rows.locator("td[data-label=Route]").all_text_contents():
            assert cell == shown
    await context.close()
