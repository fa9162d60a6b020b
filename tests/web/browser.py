"""Headless Chromium for the web tests, driven by Playwright for Python (issue 8).

The SYSTEM Chromium is used (``/usr/bin/chromium``, installed by ``.ci/run`` from the
distribution's packages); Playwright's own browser download is never used. A missing browser
or Playwright is a test FAILURE with a message saying how to install it, never a skip.

Every page records console messages of type ``error`` and uncaught page errors; the ``page``
fixture asserts there were none when the test ends.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "web"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def require_browser() -> None:
    if not CHROMIUM.exists():
        found = shutil.which("chromium") or shutil.which("chromium-browser")
        pytest.fail(f"{CHROMIUM} is missing (found: {found or 'nothing'}); the browser tests "
                    "need the system Chromium: apt-get install -y chromium chromium-driver "
                    "(.ci/run does it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright for Python is not installed: pip install -e '.[dev]'")


@dataclass
class Console:
    """Console errors and page errors seen on a page."""

    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            self.messages.append(f"{msg.type}: {msg.text}")
            if msg.type == "error":
                self.errors.append(f"console error: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))


@contextlib.asynccontextmanager
async def chromium(profile: Path, viewport: dict[str, int] = LAPTOP) -> AsyncIterator[Any]:
    """A fresh persistent context (its own user-data dir) in headless system Chromium."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        ctx = await p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True,
            viewport=viewport)
        try:
            yield ctx
        finally:
            await ctx.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


async def log_in(page: Any, user: str, password: str) -> None:
    """Log in through the page's own form (the "Log in" button, unless the form is already
    up), and wait until the reloaded page knows who it is and is live again."""
    from playwright.async_api import expect

    if not await page.locator("#login").is_visible():
        await page.locator("#login-open").click()
    await page.locator("#login-user").fill(user)
    await page.locator("#login-password").fill(password)
    await page.locator("#login-submit").click()
    await expect(page.locator("#who")).to_have_attribute("data-identity", user)
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "open")
