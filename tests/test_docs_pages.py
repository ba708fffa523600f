"""/docs and /redoc render the API in Chromium with every request to another host blocked: their
scripts and styles come from this server (app/api/docs_pages.py), not a CDN."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from app.api.docs_pages import ASSETS_URL
from tests.support.browser import CHROMIUM_FLAGS, needs_chromium

pytestmark = needs_chromium
OPERATIONS = ["/generate", "/health", "/ready", "/info", "/metrics"]


@pytest.fixture
def offline_page(tmp_path, chromium):
    """A tab that may talk to 127.0.0.1 alone; every other request is aborted and recorded."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context()
        blocked: list[str] = []

        def only_local(route) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort("internetdisconnected")

        context.route("**/*", only_local)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.blocked = blocked  # type: ignore[attr-defined]
        yield page
        assert not errors, f"uncaught errors in the page: {errors}"
        browser.close()


def test_swagger_ui_lists_every_operation_offline(live, offline_page):
    offline_page.goto(f"{live.url}/docs")
    for path in OPERATIONS:
        expect(offline_page.locator(".opblock-summary-path", has_text=path).first).to_be_visible()
    expect(offline_page.locator(".opblock-summary-path", has_text="/generate").first).to_have_attribute(
        "data-path", "/generate"
    )
    assert offline_page.blocked == []  # nothing was even asked of another host


def test_redoc_renders_the_operations_offline(live, offline_page):
    console_errors: list[str] = []
    offline_page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    offline_page.goto(f"{live.url}/redoc")
    expect(offline_page.get_by_text("Write a story, optionally streaming every denoising step").first).to_be_visible()
    expect(offline_page.get_by_text("Model, device, limits, defaults and engine counters").first).to_be_visible()
    assert offline_page.blocked == []
    assert console_errors == []  # ReDoc's logo came from cdn.redoc.ly, which the page's CSP refused


def test_the_pages_point_at_local_assets_only(live):
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{live.url}{page}").text
        assert ASSETS_URL in html and "cdn.jsdelivr.net" not in html and "fonts.googleapis" not in html, page
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert httpx.get(f"{live.url}{ASSETS_URL}/{name}").status_code == 200, name
