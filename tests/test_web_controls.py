"""The page in Chromium: limits checked against /info before sending, nothing drawn for a refused
request, block length off under random remasking, and an engine line that follows the server."""

from __future__ import annotations

import json
import threading

import httpx
from playwright.sync_api import expect

from tests.conftest import TINY_SEQ_LEN
from tests.support.browser import fill, needs_chromium, panel

pytestmark = needs_chromium


def generate_posts(page) -> list[dict]:
    """Every POST /generate body the page sends from now on."""
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/generate") else None)
    return sent


def test_a_length_over_the_models_limit_is_refused_before_sending(page, live):
    section, sent = panel(page), generate_posts(page)
    max_length = httpx.get(f"{live.url}/info").json()["max_length"]
    fill(section, length=9999)
    section.get_by_role("button", name="Generate").click()
    error = section.locator("[data-field=length] .error")
    expect(error).to_contain_text(f"from 1 to {max_length}, this model's maximum length")
    expect(section.locator("[data-ref=status]")).to_contain_text("nothing was sent")
    expect(section.get_by_label("Length", exact=True)).to_be_focused()
    assert sent == []
    expect(section.locator(".cell")).to_have_count(TINY_SEQ_LEN)  # not 9,999 cells


def test_a_request_the_server_refuses_draws_nothing(page):
    section, sent = panel(page), generate_posts(page)
    fill(section, length=TINY_SEQ_LEN + 10, steps=0)  # a length the model allows, steps the server refuses
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-field=steps] .error")).to_contain_text("greater than or equal to 1")
    assert len(sent) == 1
    expect(section.locator(".cell")).to_have_count(TINY_SEQ_LEN)  # still the page's first canvas

    fill(section, steps=4)  # accepted: now the canvas has the new length
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    expect(section.locator(".cell")).to_have_count(TINY_SEQ_LEN + 10)


def test_block_length_is_off_under_random_remasking_and_says_why(page):
    section, sent = panel(page), generate_posts(page)
    blocks = section.get_by_label("Block length")
    fill(section, remasking="low_confidence", block_length=8, steps=4)
    expect(blocks).to_be_enabled()
    fill(section, remasking="random")
    expect(blocks).to_be_disabled()
    assert "no ranking for blocks to order" in blocks.get_attribute("title")
    expect(section.locator("[data-field=block_length] .hint")).to_have_text("not for random remasking")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    assert "block_length" not in sent[-1] and sent[-1]["remasking"] == "random"
    for rule in ("threshold", "entropy_bound", "low_confidence"):  # every confidence-ranked rule uses it
        fill(section, remasking=rule)
        expect(blocks).to_be_enabled()
        assert not blocks.get_attribute("title")


def test_the_endings_rule_is_sent_and_a_preset_sets_it(page, live):
    section, sent = panel(page), generate_posts(page)
    fill(section, endings="length_first", steps=4)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    assert sent[-1]["endings"] == "length_first"
    preset = httpx.get(f"{live.url}/info").json()["presets"]["fast"]
    fill(section, preset="fast")
    expect(section.get_by_label("End rule")).to_have_value(preset["endings"])


def test_the_engine_line_follows_requests_from_elsewhere(page, live):
    live.wait_idle()
    engine = page.locator("#engine")
    expect(engine).to_have_attribute("data-active", "0")
    opened: dict[str, str] = {}

    def another_client() -> None:  # a stream the page knows nothing about
        body = {"stream": True, "steps": 4000, "remasking": "low_confidence"}
        with httpx.stream("POST", f"{live.url}/generate", json=body, timeout=120) as response:
            opened["id"] = response.headers["X-Stream-ID"]
            for _ in response.iter_lines():
                pass

    reader = threading.Thread(target=another_client, daemon=True)
    reader.start()
    expect(engine).to_have_attribute("data-active", "1")  # with no click on the page
    expect(engine).to_contain_text("engine: 1 active")
    assert httpx.delete(f"{live.url}/generate/{opened['id']}").status_code == 204
    expect(engine).to_have_attribute("data-active", "0")
    reader.join(timeout=30)
