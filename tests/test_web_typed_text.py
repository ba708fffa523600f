"""The page shows typed text as typed (Chromium): the story, and the fixed cells of a template, on the
shipped model's vocabulary, where "Zoë" and an emoji are [UNK]."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from app.config import Settings
from tests.support.browser import LiveServer, fill, needs_chromium, panel

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(shipped_vocab_dir):
    """The page's server (tests/support/browser_fixtures.py) on the shipped vocabulary."""
    server = LiveServer(Settings(model=str(shipped_vocab_dir), device="cpu", ping_interval=0, shutdown_grace=1))
    server.start()
    yield server
    server.stop()


def test_the_page_shows_the_story_with_the_prompt_as_typed(page):
    section = panel(page)
    typed = "Zoë 🐱 went to Zürich. It’s “fine”."
    fill(section, prompt=typed, steps=6, seed=4, length=32)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    story = section.locator("[data-ref=story]").inner_text()
    assert story.startswith(typed) and "##" not in story
    fill(section, prompt=f"{typed} [___:5] — naïve café.")  # blanks typed in the prompt, as the API reads them
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=story]")).to_contain_text("— naïve café.")
    assert section.locator("[data-ref=story]").inner_text().startswith(typed)


def test_the_pages_fixed_cells_show_typed_text_as_typed(page):
    section = panel(page)
    fill(section, prompt="Zoë 🐱 [___:4] It’s the end.", steps=4, seed=1)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    fixed = section.locator(".cell.fixed:visible").all_inner_texts()
    assert "Zoë 🐱" in fixed and "It’s the end." in fixed and not any("UNK" in text for text in fixed)
    section.get_by_label("Replay the denoising").fill("0")  # a replay draws them again, as typed
    assert "Zoë 🐱" in section.locator(".cell.fixed:visible").all_inner_texts()
