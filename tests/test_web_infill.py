"""The page writes around fixed text: blanks in the prompt, an ending, and rewriting a selection (Chromium)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import expect

from tests.support.browser import fill, needs_chromium, panel

pytestmark = needs_chromium

WATCH_CELLS = """
el => {
  el.snapshots = [];
  const kind = (c) => c.classList.contains("fixed") ? `F:${c.textContent}`
    : c.classList.contains("masked") ? "M" : `W:${c.textContent}`;
  new MutationObserver(() => el.snapshots.push([...el.children].map(kind)))
    .observe(el, {childList: true, characterData: true, subtree: true, attributes: true});
}
"""


def cell_texts(section) -> list[str]:
    return section.locator("[data-ref=cells] > .cell").evaluate_all("cells => cells.map(c => c.textContent)")


def test_a_template_with_a_blank_changes_only_the_blank_cells(page):
    section = panel(page)
    prompt = section.get_by_label("Prompt", exact=True)
    prompt.fill("Once upon a time")
    section.get_by_label("Blank size").fill("6")
    section.get_by_role("button", name="Insert blank").click()
    prompt.press("End")
    prompt.type("The end.")
    assert prompt.input_value() == "Once upon a time [___:6] The end."
    fill(section, steps=12, seed=3, temperature=1.0)
    section.locator("[data-ref=cells]").evaluate(WATCH_CELLS)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()

    snapshots = section.locator("[data-ref=cells]").evaluate("el => el.snapshots")
    drawn = [shot for shot in snapshots if any(kind.startswith("F:") for kind in shot)]
    first, last = drawn[0], drawn[-1]
    assert len(first) == 1 + 4 + 6 + 3 + 1  # [CLS], the texts, the blank, [SEP]: no length from the form
    fixed = [i for i, kind in enumerate(first) if kind.startswith("F:")]
    assert fixed == [*range(5), *range(11, 15)]
    assert all([shot[i] for i in fixed] == [first[i] for i in fixed] for shot in drawn)  # never touched
    assert {i for shot in drawn for i, kind in enumerate(shot) if kind == "M"} == set(range(5, 11))
    assert all(last[i].startswith("W:") for i in range(5, 11))  # every blank cell filled
    story = section.locator("[data-ref=story]").inner_text()
    assert story.startswith("Once upon a time") and story.endswith("The end.")
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert parse_qs(urlsplit(href).query)["prompt"] == ["Once upon a time [___:6] The end."]


def test_an_ending_closes_the_story_and_travels_in_the_replay_link(page, live):
    section = panel(page)
    fill(section, prompt="Once upon a time", length=30, steps=10, seed=4)
    section.get_by_label("Ending").fill("They were friends forever.")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    story = section.locator("[data-ref=story]").inner_text()
    assert story.startswith("Once upon a time") and story.endswith("They were friends forever.")
    expect(section.locator("[data-ref=cells] > .cell:not(.end)")).to_have_count(30)  # one a position
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert parse_qs(urlsplit(href).query)["ending"] == ["They were friends forever."]
    page.goto(live.url + href)
    replayed = panel(page)
    expect(replayed.locator("[data-ref=final]")).to_be_visible()
    assert replayed.locator("[data-ref=story]").inner_text() == story


def test_rewriting_a_selected_word_changes_it_and_nothing_else(page, live):
    section = panel(page)
    fill(section, steps=16, seed=5, temperature=1.0)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    before = cell_texts(section)
    section.locator("[data-ref=cells]").evaluate(
        """el => { const range = document.createRange();
                   range.setStart(el.children[10], 0); range.setEnd(el.children[12], 1);
                   document.getSelection().removeAllRanges(); document.getSelection().addRange(range); }"""
    )
    with page.expect_request("**/generate") as sent:
        section.get_by_role("button", name="Rewrite selection").click()
    edit = json.loads(sent.value.post_data)["edit"]
    expect(section.locator("[data-ref=final]")).to_be_visible()
    expect(section.locator("[data-ref=status]")).to_contain_text("Done")

    rewritten = {p for span in edit["spans"] for p in range(span["start"], span["end"])}
    assert {10, 11, 12} <= rewritten and max(rewritten) - min(rewritten) < 12  # whole words around the selection
    after = cell_texts(section)
    assert len(after) == len(edit["tokens"])
    assert all(after[p] == before[p] for p in range(len(after)) if p not in rewritten)
    assert any(after[p] != before[p] for p in rewritten)
    expect(section.locator(".cell.fixed")).to_have_count(len(after) - len(rewritten))
    expect(section.locator("[data-field=edit]")).to_be_visible()
    expect(section.locator("[data-field=edit] .hint")).to_contain_text("Rewriting tokens")
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert json.loads(parse_qs(urlsplit(href).query)["edit"][0]) == edit

    section.get_by_role("button", name="Write a new story instead").click()
    expect(section.locator("[data-field=edit]")).to_be_hidden()
