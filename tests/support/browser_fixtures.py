"""The page's fixtures, a plugin of tests/conftest.py: a live server and a Chromium per module, a tab per test."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from app.config import Settings
from tests.support.browser import CHROMIUM_FLAGS, LiveServer, chromium_path


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, required (`needs_chromium` asks for it before anything starts)."""
    return chromium_path()


@pytest.fixture(scope="module")
def live(tiny_checkpoint_dir):
    settings = Settings(model=str(tiny_checkpoint_dir), device="cpu", ping_interval=0, shutdown_grace=1)
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory, chromium):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, live) -> Page:
    """A fresh tab on the page, loaded with /info's defaults; fails the test on uncaught JS errors."""
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(live.url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    yield page
    page.close()
    assert not errors, f"uncaught errors in the page: {errors}"
