"""Headless Chromium for the page tests: Debian's chromium driven by Playwright for Python (its own
browser download does not work here, so it is launched by executable_path). Every page opened through
`Browser.page` has its console errors and uncaught exceptions recorded; `Browser.assert_clean` fails a
test that saw any."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SCREENSHOTS = Path(__file__).resolve().parent / "out" / "screenshots"  # gitignored
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

# The browser's "Failed to load resource" console line for an HTTP error answer of the API that the
# page handles and shows (a 409 sold_out, a 402 decline, a 404 from an endpoint this server lacks).
# Anything else in the console (a missing asset, a CSP refusal, an exception) is an error.
_HANDLED_PREFIXES = ("/api/", "/whep/", "/whip/", "/dev/token")


def chromium_path() -> str | None:
    return os.environ.get("LIVESALE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: Playwright for Python is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "browser tests skipped: no chromium on PATH (as root `make test` runs apt-get install chromium)"
    return None


@dataclass
class Browser:
    browser: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Console errors matching `pattern` are expected in this test (say why where it is called)."""
        self.allowed.append(re.compile(pattern))

    async def context(self, viewport: dict[str, int] | None = None) -> Any:
        """A fresh context: its own localStorage, so its own signed-in user."""
        return await self.browser.new_context(viewport=viewport or PHONE)

    async def page(self, viewport: dict[str, int] | None = None, ctx: Any = None) -> Any:
        ctx = ctx or await self.context(viewport)
        page = await ctx.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("dialog", self._dialog)
        return page

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        where = urlparse(msg.location.get("url", "")).path
        if msg.text.startswith("Failed to load resource") and where.startswith(_HANDLED_PREFIXES):
            return
        if any(p.search(msg.text) for p in self.allowed):
            return
        self.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)  # an alert() would mean script ran that should not have
        await dialog.dismiss()

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        assert not self.dialogs, self.dialogs


@contextlib.asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), args=list(args))
        try:
            yield Browser(b)
        finally:
            await b.close()


async def sign_in(page: Any, user: str) -> None:
    """Signs in through the page's own sheet (the demo's POST /dev/token)."""
    await page.click("#chip button")
    await page.fill("dialog input[name=user]", user)
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector(f"#chip button:text-is('{user}')")
