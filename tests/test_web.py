"""The web page end to end: headless Chromium (Playwright) against a real uvicorn with a tiny model."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.sync_api import expect

from tests.conftest import TINY_SEQ_LEN
from tests.support.browser import fill, needs_chromium, panel

pytestmark = needs_chromium


def record_step_counter(section) -> None:
    """Keep every text the step counter shows, so a test can see the values it passed through."""
    section.locator("[data-ref=step]").evaluate(
        """el => { el.seen = []; new MutationObserver(() => el.seen.push(el.textContent))
                   .observe(el, {childList: true, characterData: true, subtree: true}); }"""
    )


def steps_seen(section) -> list[int]:
    seen = section.locator("[data-ref=step]").evaluate("el => el.seen")
    return [int(text.split("/")[0]) for text in seen]


def test_page_and_static_files_are_served(live):
    index = httpx.get(f"{live.url}/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert index.headers["cache-control"] == "no-cache"
    for name in ("app.js", "panel.js", "view.js", "api.js", "sse.js", "style.css"):
        asset = httpx.get(f"{live.url}/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{live.url}/static/missing.js").status_code == 404
    assert "/" not in httpx.get(f"{live.url}/openapi.json").json()["paths"]


def test_the_page_loads_with_defaults_from_info(page, live):
    info = httpx.get(f"{live.url}/info").json()
    defaults, section = info["defaults"], panel(page)
    assert section.get_by_label("Length", exact=True).input_value() == str(defaults["length"]) == str(TINY_SEQ_LEN)
    assert section.get_by_label("Length", exact=True).get_attribute("max") == str(info["max_length"])
    assert section.get_by_label("Steps").input_value() == str(defaults["steps"])
    assert section.get_by_label("Remasking").input_value() == defaults["remasking"]
    assert section.get_by_label("End rule").input_value() == defaults["endings"]
    assert float(section.get_by_label("Temperature").input_value()) == defaults["temperature"]
    assert section.get_by_label("Top-k").input_value() == str(defaults["top_k"] or "")
    assert section.get_by_label("Block length").input_value() == str(defaults["block_length"] or "")
    assert section.get_by_label("Seed").input_value() == ""
    expect(page.locator("#server")).to_contain_text(info["model"])
    expect(section.locator(".cell.masked")).to_have_count(TINY_SEQ_LEN)


def test_generate_streams_every_step_then_shows_the_story(page, live):
    section = panel(page)
    # fewer steps than maskable positions: every step reveals something, so every replayed step has masks
    fill(section, prompt="Once upon a time", steps=40, remasking="low_confidence", seed=7)
    record_step_counter(section)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()

    seen = steps_seen(section)
    intermediate = {step for step in seen if 1 < step < 40}
    assert len(intermediate) >= 3, f"the counter jumped to the end: {seen}"
    assert seen == sorted(seen) and seen[-1] == 40
    expect(section.locator("[data-ref=step]")).to_have_text("40 / 40")
    expect(section.locator("[data-ref=seed]")).to_have_text("7")
    expect(section.locator("[data-ref=status]")).to_contain_text("Done")
    expect(section.locator(".cell.prompt")).to_have_text("Once upon a time")
    expect(section.locator(".cell.masked:visible")).to_have_count(0)
    assert section.locator("[data-ref=story]").inner_text().strip()

    # the scrubber steps back through the denoising, from all masked to the final draft
    scrubber = section.get_by_label(re.compile("Replay the denoising"))
    events = int(scrubber.get_attribute("max"))  # one per step event; a busy server merges steps
    assert len(intermediate) + 1 <= events <= 40 and scrubber.input_value() == str(events)
    scrubber.fill("0")
    prompt_positions = TINY_SEQ_LEN - section.locator(".cell.masked:visible").count()
    assert 1 < prompt_positions < 10  # [CLS] and the prompt's pieces
    scrubber.fill(str(events // 2))
    middle = int(section.locator("[data-ref=step]").inner_text().split("/")[0])
    assert 0 < middle < 40
    assert 0 < section.locator(".cell.masked:visible").count() < TINY_SEQ_LEN - prompt_positions
    scrubber.focus()
    page.keyboard.press("End")
    expect(section.locator(".cell.masked:visible")).to_have_count(0)


def test_words_returned_to_the_mask_fade_back_and_the_story_still_completes(page, live):
    """With revision sampling, a step event's `remasked` cells turn back into masks, marked as this step's
    (they animate), the story still ends with no mask, and the scrubber replays remasks too."""
    section = panel(page)
    fill(section, prompt="Once upon a time", steps=40, revision=0.5, seed=3)
    expect(section.get_by_label("Revision")).to_have_value("0.5")
    section.locator("[data-ref=cells]").evaluate(
        """el => { el.remasked = 0; new MutationObserver((changes) => { for (const c of changes)
                     if (c.target.classList?.contains("remasked") && c.target.classList.contains("masked"))
                       el.remasked++; })
                   .observe(el, {attributes: true, attributeFilter: ["class"], subtree: true}); }"""
    )
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    assert section.locator("[data-ref=cells]").evaluate("el => el.remasked") > 0
    expect(section.locator(".cell.masked:visible")).to_have_count(0)
    final = section.locator("[data-ref=cells] .cell:visible").all_inner_texts()
    scrubber = section.get_by_label(re.compile("Replay the denoising"))
    scrubber.fill("0")
    scrubber.focus()
    page.keyboard.press("End")  # replays every event, remasks included: the same final draft
    expect(section.locator(".cell.masked:visible")).to_have_count(0)
    assert section.locator("[data-ref=cells] .cell:visible").all_inner_texts() == final
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert parse_qs(urlsplit(href).query)["revision"] == ["0.5"]


def test_the_replay_link_writes_the_same_story(page, live):
    section = panel(page)
    fill(section, steps=16, temperature=1.0, seed="")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    story = section.locator("[data-ref=story]").inner_text()
    seed = section.locator("[data-ref=seed]").inner_text()
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    query = parse_qs(urlsplit(href).query)
    assert query["seed"] == [seed] and query["steps"] == ["16"] and query["run"] == ["1"]

    page.goto(live.url + href)  # loads the settings and runs at once
    replayed = panel(page)
    expect(replayed.locator("[data-ref=final]")).to_be_visible()
    assert replayed.get_by_label("Seed").input_value() == seed
    assert replayed.locator("[data-ref=story]").inner_text() == story


def test_block_length_is_sent_and_kept_in_the_replay_link(page, live):
    settings = {"steps": 16, "remasking": "low_confidence", "temperature": 1.0, "seed": 9}
    section = panel(page)
    fill(section, **settings, block_length=8)  # remasking first: block length is off under random
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert parse_qs(urlsplit(href).query)["block_length"] == ["8"]

    def api_story(block_length):
        body = {**settings, "block_length": block_length, "stream": False}
        return httpx.post(f"{live.url}/generate", json=body, timeout=60).json()["text"]

    blocked = api_story(8)
    assert section.locator("[data-ref=story]").inner_text().strip() == blocked.strip()
    assert api_story(None) != blocked  # so the page's story shows that it asked for blocks


def test_seeds_beyond_javascripts_safe_integers_keep_every_digit(page):
    section = panel(page)
    fill(section, steps=4, seed=2**63 - 1)  # a JS number would round it to 9223372036854775808
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=seed]")).to_have_text(str(2**63 - 1))


def test_stop_closes_the_stream_and_frees_the_server_slot(page, live):
    before = live.wait_idle()
    section = panel(page)
    fill(section, steps=4000, remasking="low_confidence")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=step]")).to_have_text(re.compile(r"^([3-9]|\d\d+) / 4000$"))
    assert live.engine()["active"] == 1

    section.get_by_role("button", name="Stop").click()
    expect(section.locator("[data-ref=status]")).to_contain_text("Stopped at step")
    after = live.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    expect(section.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.locator("#engine")).to_have_attribute("data-active", "0")


def test_a_dropped_connection_reconnects_and_the_story_completes(page, live, browser_context):
    before = live.wait_idle()
    section = panel(page)
    settings = {"length": 24, "steps": 4096, "remasking": "low_confidence", "temperature": 1.0, "seed": 21}
    fill(section, **settings)
    record_step_counter(section)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=step]")).to_have_text(re.compile(r"^([3-9]|\d\d+) / 4096$"))
    browser_context.set_offline(True)  # the reconnections fail until the network is back
    live.cut_connections()  # and the stream's connection dies mid-stream
    status = section.locator("[data-ref=status]")
    expect(status).to_contain_text("reconnecting… (attempt 2)")
    browser_context.set_offline(False)  # the page retries at once when the browser is back online

    expect(section.locator("[data-ref=final]")).to_be_visible()
    expect(status).to_contain_text("Done")
    expect(section.locator("[data-ref=step]")).to_have_text("4096 / 4096")
    expect(section.locator(".cell.masked:visible")).to_have_count(0)
    seen = steps_seen(section)
    assert seen == sorted(seen), "the counter went back after the reconnection"
    after = live.wait_idle()  # the server kept the story for the page to resume, and finished it
    assert after["completed"] == before["completed"] + 1 and after["cancelled"] == before["cancelled"]
    story = httpx.post(f"{live.url}/generate", json={**settings, "stream": False}, timeout=120).json()["text"]
    assert section.locator("[data-ref=story]").inner_text().strip() == story.strip()


def test_a_stream_the_server_dropped_is_not_retried_forever(page, live):
    section = panel(page)
    fill(section, length=24, steps=4096, remasking="low_confidence")
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=step]")).to_have_text(re.compile(r"^([3-9]|\d\d+) / 4096$"))
    gone = {"detail": "no such stream: it was cancelled, never existed, or ended or lost its client more than 15 s ago"}
    page.route("**/generate/*", lambda route: route.fulfill(status=404, json=gone))  # as after the grace
    live.cut_connections()
    status = section.locator("[data-ref=status]")
    expect(status).to_contain_text("Lost the connection, and could not resume the story")
    expect(status).to_contain_text("no such stream")
    expect(section.get_by_role("button", name="Generate")).to_be_enabled()


def test_bad_fields_show_the_servers_422_next_to_each_field(page, live):
    section = panel(page)
    # min= attributes, but novalidate: the server decides (block length needs a confidence-ranked rule)
    fill(section, steps=0, temperature=-1, remasking="low_confidence", block_length=0)
    section.get_by_role("button", name="Generate").click()
    steps_error = section.locator("[data-field=steps] .error")
    expect(steps_error).to_contain_text("greater than or equal to 1")
    expect(section.locator("[data-field=temperature] .error")).to_contain_text("greater than or equal to 0")
    expect(section.locator("[data-field=block_length] .error")).to_contain_text("greater than or equal to 1")
    expect(section.get_by_label("Steps")).to_have_attribute("aria-invalid", "true")
    expect(section.get_by_label("Steps")).to_be_focused()
    described_by = section.get_by_label("Steps").get_attribute("aria-describedby").split()
    assert steps_error.get_attribute("id") in described_by
    expect(section.locator("[data-ref=status]")).to_have_attribute("data-kind", "error")
    expect(section.get_by_role("button", name="Generate")).to_be_enabled()

    section.get_by_label("Steps").fill("4")  # typing clears the field's error
    expect(steps_error).to_be_empty()
    fill(section, temperature=0, length=100, block_length="")  # over the model's 64: the page says so itself
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-field=length] .error")).to_contain_text("from 1 to 64, this model's maximum length")


def test_busy_and_lost_connections_show_messages(page):
    section = panel(page)
    page.route(
        "**/generate",
        lambda route: route.fulfill(status=429, headers={"Retry-After": "7"}, json={"detail": "the server is busy"}),
    )
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=status]")).to_have_text("The server is busy: retry in 7 s.")
    expect(section.get_by_role("button", name="Generate")).to_be_enabled()

    page.unroute("**/generate")
    page.route("**/generate", lambda route: route.abort("connectionreset"))
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=status]")).to_have_text("Cannot reach the server.")

    page.unroute("**/generate")
    step = '{"step":1,"steps":9,"t":0.8,"masked":40,"changed":[],"text":""}'
    cut = f"event: step\r\nid: 1\r\ndata: {step}\r\n\r\n"  # then the connection ends: no done event
    page.route(
        "**/generate", lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=cut)
    )
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=status]")).to_contain_text("Lost the connection at step 1")
    expect(section.get_by_role("button", name="Stop")).to_be_disabled()


def test_side_by_side_comparison_runs_two_streams(page, live):
    before = live.wait_idle()
    first = panel(page)
    fill(first, steps=200, remasking="random", seed=11)
    page.get_by_role("button", name="Add comparison").click()
    second = panel(page, 2)
    assert second.get_by_label("Remasking").input_value() == "low_confidence"
    assert second.get_by_label("Seed").input_value() == "11"
    record_step_counter(first)
    record_step_counter(second)

    page.get_by_role("button", name="Generate all").click()
    for section in (first, second):
        expect(section.locator("[data-ref=final]")).to_be_visible()
        expect(section.locator("[data-ref=seed]")).to_have_text("11")
        assert len({step for step in steps_seen(section) if 1 < step < 200}) >= 3

    after = live.wait_idle()
    assert after["completed"] == before["completed"] + 2
    pairs = after["batch_sizes"].get("2", 0) - before["batch_sizes"].get("2", 0)
    assert pairs > 0, "the two streams never shared a forward pass"
    share_link = page.get_by_role("link", name="Link to this comparison").get_attribute("href")
    share = parse_qs(urlsplit(share_link).query)
    assert share["1.remasking"] == ["random"] and share["2.remasking"] == ["low_confidence"]

    second.get_by_role("button", name="Remove this generation").click()
    expect(page.locator("section.panel")).to_have_count(1)


def test_keyboard_and_phone_width(page):
    page.keyboard.press("Tab")  # a skip link first, then the toolbar and every field, in order
    expect(page.get_by_role("link", name="Skip to the generations")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Generate all")).to_be_focused()

    page.set_viewport_size({"width": 375, "height": 800})
    page.get_by_role("button", name="Add comparison").click()
    expect(page.locator("section.panel")).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    first, second = (panel(page, n).bounding_box() for n in (1, 2))
    assert second["y"] >= first["y"] + first["height"]  # stacked, not squeezed side by side


def test_a_fast_preset_fills_the_form_and_the_page_shows_its_forwards(page, live):
    fast = httpx.get(f"{live.url}/info").json()["presets"]["fast"]
    section = panel(page)
    section.get_by_label("Preset").select_option("fast")
    assert section.get_by_label("Steps").input_value() == str(fast["steps"])
    assert section.get_by_label("Remasking").input_value() == fast["remasking"]
    fill(section, seed=4)
    section.get_by_role("button", name="Generate").click()
    expect(section.locator("[data-ref=final]")).to_be_visible()

    answer = httpx.post(f"{live.url}/generate", json={"preset": "fast", "seed": 4}, timeout=60).json()
    assert section.locator("[data-ref=story]").inner_text().strip() == answer["text"].strip()
    expect(section.locator("[data-ref=forwards]")).to_have_text(str(answer["forwards"]))
    expect(section.locator("[data-ref=tokensPerForward]")).to_have_text(f"{answer['tokens_per_forward']:.2f}")
    expect(section.locator("[data-ref=summary]")).to_contain_text(f"{answer['forwards']} forwards")
    href = section.get_by_role("link", name="replay this story").get_attribute("href")
    assert parse_qs(urlsplit(href).query)["preset"] == ["fast"]


SSE_CASES = r"""
async () => {
  const { SSEParser } = await import("/static/sse.js");
  const stream = "\uFEFF: hello\r\n"
    + "event: step\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n"
    + ": ping\r\n\r\n"
    + "data: line one\ndata:line two\ndata\n\n"
    + "id: 7\rretry: 300\revent: done\rdata:  two spaces\r\r"
    + "event: ignored-no-data\n\n"
    + "data: unterminated";
  const expected = [
    { type: "step", data: "{\"a\":1}", id: "1" },
    { type: "message", data: "line one\nline two\n", id: "1" },
    { type: "done", data: " two spaces", id: "7" },
  ];
  const failures = [];
  // every way of cutting the stream in two, and one character at a time
  const cuts = [...Array(stream.length + 1).keys()].map((i) => [stream.slice(0, i), stream.slice(i)]);
  cuts.push([...stream]);
  for (const chunks of cuts) {
    const events = [], comments = [];
    const parser = new SSEParser((e) => events.push(e), (c) => comments.push(c));
    for (const chunk of chunks) parser.feed(chunk);
    const got = JSON.stringify([events, comments, parser.retry]);
    const want = JSON.stringify([expected, ["hello", "ping"], 300]);
    if (got !== want) failures.push({ chunks, got });
  }
  return failures.slice(0, 3);
}
"""


def test_the_sse_parser_survives_any_chunking(page):
    assert page.evaluate(SSE_CASES) == []
