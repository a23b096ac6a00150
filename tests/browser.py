"""The dashboard tests' browser: Debian's Chromium driven by Playwright, a signed-in
page, and screenshots kept in one folder (printed by the tests that save them) for a
person to look at."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from .conftest import CHROMIUM

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"

Theme = Literal["light", "dark"]


@pytest.fixture(name="browser")
async def chromium() -> AsyncIterator[Browser]:
    """(Imported by each dashboard test module: `from .browser import chromium`.)"""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


async def signed_in(
    browser: Browser, url: str, key: str, width: int = 1280, theme: Theme = "light"
) -> tuple[BrowserContext, Page]:
    """A new browser window `width` px wide, its system theme `theme`, signed in with
    `key`; the dialogs the page opens are answered by the test and kept in page.dialogs."""
    context = await browser.new_context(
        viewport={"width": width, "height": 900}, color_scheme=theme
    )
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.dialogs = dialogs  # type: ignore[attr-defined]  # (read back by the tests)
    await page.goto(url + "/ui/")
    await page.fill("#signin-key", key)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector("#nav a", state="attached")
    return context, page


def policy_refusals(page: Page) -> list[str]:
    """What the page's Content-Security-Policy stops from now on (nothing may be)."""
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return refused


SAVED: list[Path] = []  # (named at the end of the run by conftest's terminal summary)


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    SAVED.append(path)
    print(f"screenshot: {path}")
