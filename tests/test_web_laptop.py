"""The page on a laptop's screen (Chromium): the canvas in view after Generate, the sampler fields
folded under Advanced with only those the chosen rule reads, and a finished story's padding folded
into one end marker that the legend explains."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.support.browser import fill, needs_chromium, panel

pytestmark = needs_chromium

FIRST_CELL_TOP = """
el => {
  const cell = [...el.querySelectorAll(".cell")].find((c) => c.offsetParent !== null);
  return {top: cell.getBoundingClientRect().top, height: window.innerHeight};
}
"""


@pytest.mark.parametrize("width, height", [(1366, 768), (1280, 800)])
def test_the_canvas_is_in_view_after_generate(page, width, height):
    page.set_viewport_size({"width": width, "height": height})
    section = panel(page)
    fill(section, prompt="Once upon a time", seed=1)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    where = section.locator("[data-ref=cells]").evaluate(FIRST_CELL_TOP)
    assert 0 <= where["top"] <= where["height"] - 80, where  # the first rows of cells, above the fold


def test_sampler_fields_are_folded_behind_the_preset(page):
    section = panel(page)
    expect(section.get_by_label("Preset")).to_be_visible()
    expect(section.get_by_label("Length", exact=True)).to_be_visible()
    expect(section.get_by_label("Steps")).to_be_hidden()
    section.locator("details.advanced > summary").click()
    expect(section.get_by_label("Steps")).to_be_visible()


@pytest.mark.parametrize(
    "rule, shown, hidden",
    [
        ("random", [], ["Threshold", "Entropy budget"]),
        ("low_confidence", [], ["Threshold", "Entropy budget"]),
        ("threshold", ["Threshold"], ["Entropy budget"]),
        ("entropy_bound", ["Entropy budget"], ["Threshold"]),
    ],
)
def test_only_the_fields_the_rule_reads_show(page, rule, shown, hidden):
    section = panel(page)
    fill(section, remasking=rule)
    for label in shown:
        expect(section.get_by_label(label)).to_be_visible()
    for label in hidden:
        expect(section.get_by_label(label)).to_be_hidden()


def test_the_padding_is_one_end_marker_and_the_meta_line_counts_story_tokens(page):
    section = panel(page)
    fill(section, prompt="Once upon a time", length=30, steps=6, seed=2)
    section.get_by_label("Ending").fill("The end.")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    expect(section.locator("[data-ref=cells] .cell.end")).to_have_count(1)
    expect(section.locator(".cell:visible", has_text="SEP")).to_have_count(0)  # folded into the marker
    expect(page.locator(".legend")).to_contain_text("where the story ended")
    # 30 positions: [CLS], 28 of story (prompt, fill, ending), and the [SEP] that ends it
    expect(section.locator("[data-ref=summary]")).to_contain_text("28 story tokens of 30 positions")
    section.get_by_label("Replay the denoising").fill("1")  # replaying unfolds it
    expect(section.locator("[data-ref=cells] .cell.end")).to_have_count(0)
