"""The page under its Content-Security-Policy, and asking for an API key, in headless Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from app.config import Settings
from tests.support.browser import LiveServer, fill, needs_chromium, panel

pytestmark = needs_chromium

RECORD_VIOLATIONS = """window.violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.violations.push(`${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint_dir):
    settings = Settings(model=str(tiny_checkpoint_dir), device="cpu", ping_interval=0, api_keys="sesame")
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tab(browser_context) -> Page:
    """A fresh tab (so a fresh sessionStorage) that records CSP violations and uncaught errors."""
    page = browser_context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    violations = page.evaluate("window.violations")
    page.close()
    assert not violations, f"the Content-Security-Policy blocked: {violations}"
    assert not errors, f"uncaught errors in the page: {errors}"


def generate_a_story(page: Page) -> None:
    section = panel(page)
    fill(section, length=16, steps=4, remasking="low_confidence")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()


def test_the_page_asks_for_a_key_keeps_it_for_the_tab_and_sends_it(tab, keyed):
    tab.goto(keyed.url)
    form = tab.locator("#key-form")
    expect(form).to_be_visible()
    expect(tab.locator("#server")).to_contain_text("Waiting for an API key")
    tab.get_by_label("API key").fill("open sesame")
    tab.get_by_role("button", name="Use this key").click()
    expect(tab.locator("#key-message")).to_contain_text("did not accept this API key")
    tab.get_by_label("API key").fill("sesame")
    tab.get_by_role("button", name="Use this key").click()
    expect(tab.locator("body")).to_have_attribute("data-ready", "true")
    expect(form).to_be_hidden()
    generate_a_story(tab)  # POST /generate with the key, streamed through fetch
    assert tab.evaluate("sessionStorage.getItem('storydiff.apiKey')") == "sesame"
    tab.reload()
    expect(tab.locator("body")).to_have_attribute("data-ready", "true")
    expect(form).to_be_hidden()


def test_the_page_runs_under_its_content_security_policy(tab, keyed):
    tab.goto(keyed.url)
    tab.evaluate("sessionStorage.setItem('storydiff.apiKey', 'sesame')")
    tab.reload()
    expect(tab.locator("body")).to_have_attribute("data-ready", "true")
    generate_a_story(tab)
    hues = tab.locator(".legend .scale .cell").evaluate_all(
        "cells => cells.map((c) => getComputedStyle(c).getPropertyValue('--hue').trim())"
    )
    assert hues == ["0", "65", "130"]  # the legend's colours, from classes now that inline styles are blocked
