"""The dashboard is accessible, measured in the browser.

axe-core (pinned in tests/node/package.json, installed by npm as the node clients are)
runs on every page: the sign-in page (empty and with an error), each entry of the nav
(read from the page, so a page added later is covered) for an admin and for a user-role
key, with the forms opened (create key's folded fields, a Change form, the price form,
Spend) and the phone's Menu open, at 1280 and 390 px, light and dark. A serious or
critical violation fails, each named with its rule, where and how to fix it. axe is
served from the gateway's own origin (a routed URL), so the page's CSP stays in force.
Under CI=true a missing axe (no npm) fails; elsewhere the tests skip, saying why.

The keyboard: Tab goes round each page and reaches every link, button, field and cut
value that can be seen, each with a focus ring of 2 px or more that nothing clips and
that stands out 3:1 or more from what is behind it (WCAG's non-text contrast), in both
themes. The first Tab stop is a skip link, seen when focused, to the page's heading. On
a phone the Menu opens with Enter, Tab goes into it, Escape closes it and gives the
focus back to the Menu button, and a page chosen in it takes the focus to its heading.

The theme button is a toggle named "Dark theme", pressed exactly while the page is dark:
as it loads in either system theme, when the system's changes, after each click, after
a reload; axe finds nothing serious on it after a click.

The API docs (/docs, /redoc: Swagger UI and ReDoc, third-party) are checked too, and
what axe finds there is printed, not failed on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page

from . import test_dashboard_fit
from .browser import Theme, chromium, policy_refusals, shot, signed_in  # noqa: F401  (chromium: the browser fixture)
from .conftest import make_key
from .helpers import NODE_DIR, node_client_ready
from .test_dashboard_fit import _show, _with_history

# The fit tests' gateway, its tables holding a 64-character user name, a 1,000-character
# model name and key previews, self-service keys on (a fixture: found by this name).
dashboard = test_dashboard_fit.dashboard

AXE = NODE_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_PATH = "/__axe-core.js"  # (answered by the test's route, never by the gateway)
SIZES: tuple[tuple[int, Theme], ...] = (
    (1280, "light"),
    (1280, "dark"),
    (390, "light"),
    (390, "dark"),
)

# What each page opens, to be checked open too: (what, the control, what it opens),
# where the page shows the control to the key (the Models page's Set price: to admins).
OPENED = {
    "keys": (
        ("create key's more fields", "#create-key summary", "#create-key details[open]"),
        ("a key's details", "tbody button[data-action=details]", "#key-details"),
        ("a key's Change form", "tbody button[data-action=edit]", "#edit-key"),
    ),
    "users": (
        ("a user's Change form", "tbody button[data-action=edit]", "#edit-user"),
        ("a user's Spend", "tbody button[data-action=spend]", "#budget-report"),
    ),
    "models": (("the price form", "tbody button[data-action=price]", "#price-form"),),
    "mykeys": (
        ("make a key's more fields", "#create-own-key summary", "#create-own-key details[open]"),
    ),
}

# In the page: axe's violations, and what it could not decide (to be looked at), each
# with its nodes.
AUDIT = """
async () => {
  const { violations, incomplete } = await axe.run(document);
  const brief = (v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    url: v.helpUrl,
    nodes: v.nodes.map((n) => {
      const why = n.failureSummary || n.any.map((c) => c.message).join("; ");
      return `${n.target.join(" ")}: ${why.replace(/\\s+/g, " ")}`;
    }),
  });
  return { violations: violations.map(brief), incomplete: incomplete.map(brief) };
}
"""

PROBE = """
() => {
  const probe = document.createElement("input");
  probe.id = "a11y-probe";
  document.getElementById("view").append(probe);
}
"""

# Every control a person could Tab to: visible, enabled, in the tab order.
TABBABLE = """
() => {
  const controls = "a[href], button, input, select, textarea, summary, [tabindex]";
  const visible = (e) => e.checkVisibility({ visibilityProperty: true });
  return [...document.querySelectorAll(controls)]
    .filter((e) => e.tabIndex >= 0 && !e.disabled && visible(e));
}
"""

# The focused element (the first time it is seen: Tab has gone round once another comes
# again), and whether its focus ring can be seen: 2 px or more, not clipped by a
# scrolling or cut box, and 3:1 or more against the colour behind it.
FOCUSED = """
() => {
  const e = document.activeElement;
  const seen = (window.__tabbed ||= new Set());
  if (!e || e === document.body) return { none: true };
  const text = e.getAttribute("aria-label") || e.textContent || e.value || "";
  const name = `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""} "${text.trim().slice(0, 40)}"`;
  // (a date's Tab stops are its parts: day, month, year, time)
  if (e === window.__last) return { same: true };
  window.__last = e;
  if (seen.has(e)) return { again: true, name };
  seen.add(e);
  const rgb = (text) => {
    const m = text.match(/[\\d.]+/g).map(Number);
    return { r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1 };
  };
  const lum = ({ r, g, b }) => {
    const lin = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  let behind = rgb(getComputedStyle(document.body).backgroundColor);
  for (let n = e.parentElement; n; n = n.parentElement) {
    const c = rgb(getComputedStyle(n).backgroundColor);
    if (c.a > 0.5) { behind = c; break; }
  }
  const style = getComputedStyle(e);
  const width = style.outlineStyle === "none" ? 0 : parseFloat(style.outlineWidth);
  const [a, b] = [lum(rgb(style.outlineColor)), lum(behind)].sort((x, y) => y - x);
  const contrast = (a + 0.05) / (b + 0.05);
  const grow = width + Math.max(0, parseFloat(style.outlineOffset) || 0);
  const r = e.getBoundingClientRect();
  const ring = {
    left: r.left - grow, right: r.right + grow, top: r.top - grow, bottom: r.bottom + grow,
  };
  const clippedBy = [];
  for (let n = e.parentElement; n && n !== document.body; n = n.parentElement) {
    const s = getComputedStyle(n);
    if (s.overflowX === "visible" && s.overflowY === "visible") continue;
    const box = n.getBoundingClientRect();
    const out = ring.left < box.left - 0.5 || ring.right > box.right + 0.5
      || ring.top < box.top - 0.5 || ring.bottom > box.bottom + 0.5;
    if (out) clippedBy.push(n.className || n.tagName);
  }
  const visible = e.matches(":focus-visible");
  return { name, width, contrast: Math.round(contrast * 100) / 100, clippedBy, visible };
}
"""

NOT_REACHED = """
(tabbable) => tabbable.filter((e) => !(window.__tabbed || new Set()).has(e)).map((e) => {
  const text = (e.getAttribute("aria-label") || e.textContent || "").trim().slice(0, 40);
  return `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""} "${text}"`;
})
"""


def axe_file() -> Path:
    """axe-core's script, installed by npm with the node clients; a skip saying why where
    npm is missing (under CI=true, node_client_ready fails instead)."""
    why = node_client_ready()
    if why is not None:
        pytest.skip(f"axe-core cannot be installed: {why}")
    assert AXE.is_file(), f"npm installed tests/node but not {AXE}"
    return AXE


async def _with_axe(page: Page, url: str, axe: Path) -> None:
    """axe, answered on the gateway's origin, so the page's script-src 'self' lets it in."""

    async def serve(route: Any) -> None:
        await route.fulfill(path=str(axe), content_type="text/javascript")

    await page.route(url + AXE_PATH, serve)


async def _audit(page: Page, url: str, where: str) -> list[str]:
    """axe's serious and critical violations on the page as it is now, printed."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.add_script_tag(url=url + AXE_PATH)
    result = cast(dict[str, list[dict[str, Any]]], await page.evaluate(AUDIT))
    found = []
    for kind, rules in result.items():
        for v in rules:
            line = f"{where}: {v['impact']} {v['id']}: {v['help']} ({v['url']})"
            if kind == "incomplete":
                line = f"{where}: to review, axe could not decide: {v['id']}: {v['help']}"
            print(line + "".join(f"\n    {node}" for node in v["nodes"]))
            if kind == "violations" and v["impact"] in ("serious", "critical"):
                found.append(f"{line}: " + "; ".join(v["nodes"]))
    return found


async def _nav(page: Page) -> list[str]:
    """The pages the nav offers this key, read from the page."""
    return cast(
        list[str],
        await page.eval_on_selector_all(
            "#nav a[href^='#/']", "(as) => as.map((a) => a.getAttribute('href').slice(2))"
        ),
    )


@pytest.mark.parametrize(("width", "theme"), SIZES)
async def test_axe_finds_nothing_serious_on_any_page(
    browser: Browser, dashboard: TestServer, db_path: str, width: int, theme: Theme
) -> None:
    axe = axe_file()
    admin_key, user_key = await _with_history(dashboard, db_path)
    url = str(dashboard.make_url("")).rstrip("/")
    found: list[str] = []
    checked: list[str] = []
    for key, role in ((admin_key, "admin"), (user_key, "user")):
        context, page = await signed_in(browser, url, key, width, theme)
        refused = policy_refusals(page)
        try:
            await _with_axe(page, url, axe)
            pages = await _nav(page)
            assert "usage" in pages and ("keys" in pages) is (role == "admin"), pages
            for name in pages:
                await _show(page, url, name)
                where = f"{name} as {role} at {width} px, {theme}"
                if not checked:  # (axe finds what it should: a field left without a label)
                    await page.evaluate(PROBE)
                    probe = await _audit(page, url, f"{where}, an unlabelled field added")
                    assert any(" label: " in p and "#a11y-probe" in p for p in probe), probe
                    await page.evaluate("document.getElementById('a11y-probe').remove()")
                found += await _audit(page, url, where)
                checked.append(name)
                for what, control, opens in OPENED.get(name, ()):
                    if not await page.locator(control).count():
                        continue
                    await page.locator(control).first.click()
                    await page.wait_for_selector(opens)
                    found += await _audit(page, url, f"{where}, {what} open")
                    checked.append(f"{name}: {what}")
                if name == "keys" and role == "admin":  # a field's error shown under it
                    await page.fill("#edit-key-rpm", "fast")
                    await page.click("#edit-key button[type=submit]")
                    await page.wait_for_selector("#edit-key-rpm-error:not(:empty)")
                    found += await _audit(page, url, f"{where}, a field's error shown")
                    checked.append("keys: a field's error")
            if width < 760:
                await page.click("#menu")
                await page.wait_for_selector("#nav.open")
                found += await _audit(page, url, f"the Menu open as {role} at {width} px, {theme}")
                await page.keyboard.press("Escape")
            await page.click("#signout")
            await page.wait_for_selector("#signin-key")
            found += await _audit(page, url, f"sign-in at {width} px, {theme}")
            await page.fill("#signin-key", "aig_not-a-key")
            await page.click("#signin-form button[type=submit]")
            await page.wait_for_selector("#signin-error:not(:empty)")
            found += await _audit(page, url, f"sign-in with an error at {width} px, {theme}")
            if role == "admin":
                await shot(page, f"a11y-signin-error-{width}-{theme}")
            assert refused == [], refused  # (axe came from the page's own origin)
        finally:
            await context.close()
    assert {"overview", "keys", "users", "models", "usage", "me", "playground"} <= set(checked)
    assert "keys: a key's Change form" in checked and "models: the price form" in checked
    assert "users: a user's Spend" in checked and "keys: a field's error" in checked
    assert "mykeys: make a key's more fields" in checked  # (a user's, self-service on)
    assert found == [], "axe: serious or critical violations:\n" + "\n".join(found)


async def _tab_round(page: Page, where: str) -> list[str]:
    """Tab until the focus comes back to where it has been: what was not reached, and
    each focus ring that cannot be seen."""
    await page.evaluate("window.__tabbed = new Set(); window.__last = null")
    tabbable = await page.evaluate_handle(TABBABLE)
    count = cast(int, await tabbable.evaluate("(list) => list.length"))
    faults = []
    for _ in range(6 * count + 3):  # (a date and time field has five stops)
        await page.keyboard.press("Tab")
        focused = cast(dict[str, Any], await page.evaluate(FOCUSED))
        if focused.get("again"):
            break
        if focused.get("none") or focused.get("same"):
            continue
        name = focused["name"]
        if not focused["visible"] or focused["width"] < 2 or focused["contrast"] < 3:
            faults.append(f"{where}: {name}: no visible focus ring ({focused})")
        if focused["clippedBy"]:
            faults.append(f"{where}: {name}: its focus ring is cut by {focused['clippedBy']}")
    missed = cast(list[str], await page.evaluate(NOT_REACHED, tabbable))
    await tabbable.dispose()
    faults += [f"{where}: Tab never reaches {name}" for name in missed]
    assert count > 0, where
    return faults


@pytest.mark.parametrize(("width", "theme"), SIZES)
async def test_the_keyboard_reaches_every_control_with_a_visible_focus(
    browser: Browser, dashboard: TestServer, db_path: str, width: int, theme: Theme
) -> None:
    admin_key, user_key = await _with_history(dashboard, db_path)
    url = str(dashboard.make_url("")).rstrip("/")
    faults: list[str] = []
    rounds = 0
    for key, role in ((admin_key, "admin"), (user_key, "user")):
        context, page = await signed_in(browser, url, key, width, theme)
        try:
            for name in await _nav(page):
                await _show(page, url, name)
                where = f"{name} as {role} at {width} px, {theme}"
                faults += await _tab_round(page, where)
                rounds += 1
                # Each form opened from the keyboard: focus its control, Enter.
                for what, control, opens in OPENED.get(name, ()):
                    if not await page.locator(control).count():
                        continue
                    await page.locator(control).first.focus()
                    await page.keyboard.press("Enter")
                    await page.wait_for_selector(opens)
                    faults += await _tab_round(page, f"{where}, {what} open")
                    rounds += 1
            where = f"as {role} at {width} px, {theme}"
            await _show(page, url, "usage")
            faults += await _skip_by_keyboard(page, where, f"{width}-{theme}-{role}")
            if width < 760:
                faults += await _menu_by_keyboard(page, where, f"{width}-{theme}-{role}")
        finally:
            await context.close()
    assert rounds >= 14
    assert faults == [], "\n".join(faults)


async def _first_field_next(page: Page, where: str) -> list[str]:
    """Tab from the Usage page's heading: its first field has the focus."""
    await page.keyboard.press("Tab")
    first = "f-user" if "as admin" in where else "f-model"
    if await page.evaluate("document.activeElement.id") != first:
        return [f"{where}: Tab from the page's heading does not go to its first field"]
    return []


async def _skip_by_keyboard(page: Page, where: str, name: str) -> list[str]:
    """The first Tab stop, seen when it has the focus, skips the header: Enter puts the
    focus on the page's heading, and the next Tab on its first field."""
    await page.reload()
    await page.wait_for_selector("#view-usage[aria-busy=false] h1")
    await page.keyboard.press("Tab")
    faults = []
    focused = cast(dict[str, Any], await page.evaluate(FOCUSED))
    box = await page.locator("#skip").bounding_box()
    if await page.evaluate("document.activeElement.id") != "skip":
        faults.append(f"{where}: the first Tab stop is not the skip link but {focused}")
    elif focused["width"] < 2 or focused["contrast"] < 3 or not box or box["width"] < 40:
        faults.append(f"{where}: the skip link cannot be seen when focused ({focused}, {box})")
    await shot(page, f"a11y-skip-{name}")
    await page.keyboard.press("Enter")
    if await page.evaluate("document.activeElement.closest('#view-usage h1')") is None:
        faults.append(f"{where}: the skip link does not take the focus to the page's heading")
    return faults + await _first_field_next(page, where)


async def _menu_by_keyboard(page: Page, where: str, name: str) -> list[str]:
    """The phone's Menu, the Tab stop after the skip link: Enter opens it, Tab goes
    into it, Escape closes it and gives the focus back to the Menu button; a page chosen
    in it with Enter takes the focus to its heading."""
    await page.evaluate("location.hash = '#/me'")  # (so that Usage can be chosen)
    await page.wait_for_selector("#view-me[aria-busy=false] h1")
    await page.reload()
    await page.wait_for_selector("#view [aria-busy=false] h1")
    await page.keyboard.press("Tab")  # (the skip link)
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "menu", where
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#nav.open a", state="visible")
    assert await page.get_attribute("#menu", "aria-expanded") == "true"
    await page.keyboard.press("Tab")
    faults = []
    if not await page.evaluate("document.activeElement.closest('#nav') !== null"):
        faults.append(f"Menu {where}: Tab does not go into the open menu")
    focused = cast(dict[str, Any], await page.evaluate(FOCUSED))
    if focused.get("width", 0) < 2 or focused.get("contrast", 0) < 3:
        faults.append(f"Menu {where}: no visible focus ring on {focused}")
    await shot(page, f"a11y-menu-focus-{name}")
    await page.keyboard.press("Escape")
    await page.wait_for_selector("#nav", state="hidden")
    assert await page.get_attribute("#menu", "aria-expanded") == "false"
    if await page.evaluate("document.activeElement.id") != "menu":
        faults.append(f"Menu {where}: Escape leaves the focus off the Menu button")
    # A page chosen from the menu with Enter: the menu closes, the page's heading has the
    # focus (not the hidden link), and the next Tab goes on from there.
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#nav.open a", state="visible")
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.getAttribute('href')") == "#/usage":
            break
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#view-usage[aria-busy=false] h1")
    await page.wait_for_selector("#nav", state="hidden")
    if await page.evaluate("document.activeElement.closest('#view-usage h1')") is None:
        faults.append(f"Menu {where}: the page chosen does not take the focus to its heading")
    return faults + await _first_field_next(page, f"Menu {where}")


# In the page: whether it is shown dark (the dark theme's background, app.css's --bg)
# and the theme button says so.
THEME_SHOWN = """
(dark) => (getComputedStyle(document.body).backgroundColor === "rgb(21, 24, 27)") === dark
  && document.getElementById("theme").getAttribute("aria-pressed") === String(dark)
"""


@pytest.mark.parametrize("system", ["light", "dark"])
async def test_the_theme_button_states_the_theme_shown(
    browser: Browser, dashboard: TestServer, db_path: str, system: Theme
) -> None:
    axe = axe_file()
    admin_key = await make_key(db_path, "root", "ops", "admin")
    url = str(dashboard.make_url("")).rstrip("/")
    context, page = await signed_in(browser, url, admin_key, 1280, system)

    async def states(dark: bool, where: str) -> None:
        """The page is dark exactly when the button says so, to a screen reader too."""
        # (the system's theme: the page's style changes first, its change event after)
        await page.wait_for_function(THEME_SHOWN, arg=dark)
        toggle = page.get_by_role("button", name="Dark theme", exact=True, pressed=dark)
        assert await toggle.count() == 1, where
        assert await page.get_attribute("#theme", "aria-pressed") == str(dark).lower(), where

    try:
        await _with_axe(page, url, axe)
        dark = system == "dark"
        await states(dark, "as loaded")
        # None chosen yet: the system's theme changing is followed, and said.
        other: Theme = "light" if dark else "dark"
        await page.emulate_media(color_scheme=other)
        await states(not dark, f"the system's theme turned {other}")
        await page.emulate_media(color_scheme=system)
        await states(dark, f"the system's theme back to {system}")
        for click in (1, 2, 3):
            await page.click("#theme")
            dark = not dark
            await states(dark, f"after click {click}")
            found = await _audit(page, url, f"after click {click} on the theme button")
            assert found == [], found
        await page.reload()
        await page.wait_for_selector("#nav a", state="attached")
        await states(dark, "the choice remembered across a reload")
        # (a choice made: the system's theme changing no longer changes the page)
        await page.emulate_media(color_scheme="light" if dark else "dark")
        await page.wait_for_timeout(200)  # (its change event, if it changed anything)
        await states(dark, "a choice made, the system's theme changed")
    finally:
        await context.close()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_axe_on_the_api_docs_is_reported(
    browser: Browser, dashboard: TestServer, path: str
) -> None:
    """Swagger UI and ReDoc are third-party: what axe finds is printed, not failed on."""
    axe = axe_file()
    url = str(dashboard.make_url("")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await _with_axe(page, url, axe)
        await page.goto(url + path)
        await page.wait_for_selector(
            ".opblock-tag-section" if path == "/docs" else "h1:has-text('aigateway')"
        )
        found = await _audit(page, url, f"{path} (third-party, reported only)")
        print(f"{path}: {len(found)} serious or critical violations (not failed on)")
        assert await page.evaluate("typeof axe.run") == "function"
    finally:
        await context.close()
