"""The web app in a real browser: Debian's Chromium driven by Playwright, one browser
context per user, a screenshot of every page kept under tests/artifacts/.

Playwright's own browser downloads are never used (``executable_path``). Without
Chromium or Playwright the browser tests fail in CI (CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collab.webapp import STATIC_DIR

CHROMIUM = os.environ.get("COLLAB_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: how long a page may take to show what a test waits for (ms)
EXPECT_MS = 10_000


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    if in_ci():
        pytest.fail(f"the browser tests cannot run in CI: {what}")
    pytest.skip(what)


def ensure_built_app() -> Path:
    """The built app the server under test serves (``collab.webapp.STATIC_DIR``).

    Run from a source checkout (collab imported from this repository), the app is built
    from web/ now, so the tests see the sources as they are. An installed collab (tox
    installs the package) must already hold its build: that is what ``pip install .``
    is for, and this checks it did.
    """
    index = STATIC_DIR / "index.html"
    if STATIC_DIR.parent != REPO / "collab":
        if not index.is_file():
            missing(f"the installed collab has no built web app ({STATIC_DIR}): "
                    "install it on a machine with Node.js and npm")
        return STATIC_DIR
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node and npm are needed to build the web app")
    web = REPO / "web"
    if not (web / "node_modules" / "esbuild").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=web, check=True, timeout=600)
    subprocess.run([node, "build.mjs"], cwd=web, check=True, timeout=300,
                   capture_output=True)
    return STATIC_DIR


def playwright_or_skip() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    return async_playwright


def artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:120]


@dataclass
class UserPage:
    """One user's page in a browser context of their own."""

    user: str
    page: Any
    errors: list[str] = field(default_factory=list)

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)

    @property
    def status(self) -> Any:
        return self.testid("connection-status")

    async def text_of(self, name: str) -> str:
        return await self.testid(name).inner_text()

    async def presence(self) -> list[str]:
        return sorted(await self.testid("presence").locator("li").all_inner_texts())


class Browser:
    """Pages signed in as users of the server at ``url``."""

    def __init__(self, browser: Any, url: str, name: str) -> None:
        self.browser = browser
        self.url = url
        self.name = name
        self.pages: list[UserPage] = []

    async def open(self, user: str, path: str = "", token: str | None = None,
                   sign_in: bool = True) -> UserPage:
        """A new context (its own sessionStorage) at ``url/#token=...`` then ``path``."""
        context = await self.browser.new_context(viewport={"width": 1100, "height": 800})
        context.set_default_timeout(EXPECT_MS)
        page = await context.new_page()
        user_page = UserPage(user, page)
        page.on("pageerror", lambda exc: user_page.errors.append(str(exc)))
        self.pages.append(user_page)
        if sign_in:
            if token is None:
                from harness import make_token
                token = make_token(user)
            await page.goto(f"{self.url}/#token={token}")
        else:
            await page.goto(self.url + "/")
        if path:
            await page.evaluate("(hash) => { location.hash = hash }", path)
        return user_page

    async def finish(self, check: bool = True) -> None:
        """Keep a screenshot of every page, then (``check``) fail on any uncaught page
        error."""
        ARTIFACTS.mkdir(exist_ok=True)
        errors = []
        for index, user_page in enumerate(self.pages):
            shot = ARTIFACTS / f"{artifact_name(self.name)}-{index}-{user_page.user}.png"
            try:
                await user_page.page.screenshot(path=str(shot), full_page=True)
            except Exception as exc:  # noqa: BLE001 - a closed page has no picture
                shot.with_suffix(".txt").write_text(f"no screenshot: {exc}\n")
            errors += [f"{user_page.user}: {error}" for error in user_page.errors]
        for user_page in self.pages:
            await user_page.page.context.close()
        assert not (check and errors), "uncaught errors in the page:\n" + "\n".join(errors)


@asynccontextmanager
async def browsing(url: str, name: str) -> AsyncIterator[Browser]:
    """Chromium for one test; screenshots and the page-error check when it ends."""
    async_playwright = playwright_or_skip()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM)
        browser = Browser(chromium, url, name)
        try:
            try:
                yield browser
            except BaseException:
                await browser.finish(check=False)  # the pictures of a failure, too
                raise
            await browser.finish()
        finally:
            await chromium.close()
