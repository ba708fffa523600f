"""Writing around fixed text over HTTP: `ending`, `segments` and `edit` with a tiny random checkpoint."""

from __future__ import annotations

import asyncio
import json

import pytest
from httpx_sse import aconnect_sse

from app.diffusion.sampler_settings import Remasking

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def words(cased_tokenizer):
    """Typed text as the cased WordPiece spells it, no special tokens."""
    return lambda text: cased_tokenizer(text, add_special_tokens=False)["input_ids"]


async def stream(client, body: dict) -> tuple[list[dict], dict]:
    async with aconnect_sse(client, "POST", "/generate", json={**body, "stream": True}) as source:
        events = [event async for event in source.aiter_sse()]
    assert events[-1].event == "done", events[-1].data
    return [json.loads(e.data) for e in events if e.event == "step"], json.loads(events[-1].data)


async def test_an_ending_stays_fixed_at_every_step_and_closes_the_story(client, cased_tokenizer, words):
    body = {"prompt": "Once upon a time", "ending": "They were friends forever.", "length": 40, "steps": 20}
    steps, done = await stream(client, {**body, "seed": 3, "temperature": 1.0})
    start, ending = [cased_tokenizer.cls_token_id, *words("Once upon a time")], words("They were friends forever.")
    blank = range(len(start), 40 - len(ending) - 1)
    assert done["length"] == 40 and len(done["tokens"]) == 40
    assert done["tokens"][: len(start)] == start
    assert done["tokens"][blank.stop :] == [*ending, cased_tokenizer.sep_token_id]
    revealed = [change["pos"] for step in steps for change in step["changed"]]
    assert sorted(revealed) == list(blank)  # every blank position once, no fixed one ever
    assert all(step["text"].startswith("Once upon a time") for step in steps)
    assert steps[0]["masked"] + len(steps[0]["changed"]) == len(blank)
    assert steps[-1]["masked"] == 0 and cased_tokenizer.mask_token_id not in done["tokens"]
    assert done["text"].startswith("Once upon a time") and done["text"].endswith("They were friends forever.")


async def test_segments_fill_every_blank_and_keep_every_text(client, cased_tokenizer, words):
    texts = ["Once upon a time", "a little fox", "The end."]
    segments = [{"text": texts[0]}, {"blank": 6}, {"text": texts[1]}, {"blank": 5}, {"text": texts[2]}]
    done = (await client.post("/generate", json={"segments": segments, "steps": 8, "seed": 1})).json()
    a, b, c = (words(text) for text in texts)
    tokens = done["tokens"]
    assert len(tokens) == done["length"] == 1 + len(a) + 6 + len(b) + 5 + len(c) + 1
    assert tokens[: 1 + len(a)] == [cased_tokenizer.cls_token_id, *a]
    at = 1 + len(a) + 6
    assert tokens[at : at + len(b)] == b and tokens[at + len(b) + 5 :] == [*c, cased_tokenizer.sep_token_id]
    assert cased_tokenizer.mask_token_id not in tokens
    text = done["text"]
    assert text.startswith("Once upon a time") and text.endswith("The end.") and "a little fox" in text


async def test_a_flexible_last_blank_lets_the_model_end_the_story(client, cased_tokenizer):
    fixed = {"segments": [{"text": "Once upon a time"}, {"blank": 10}], "steps": 4, "seed": 2}
    flexible = {"segments": [{"text": "Once upon a time"}, {"blank": 10, "flexible": True}], "steps": 4, "seed": 2}
    closed, open_end = [(await client.post("/generate", json=body)).json() for body in (fixed, flexible)]
    assert closed["length"] == 16 and closed["tokens"][-1] == cased_tokenizer.sep_token_id
    assert open_end["length"] == 15  # no end pinned: the model's own (or none) ends it


@pytest.mark.parametrize("remasking", [r.value for r in Remasking])
async def test_fixed_text_holds_under_every_remasking_rule(client, cased_tokenizer, words, remasking):
    segments = [{"blank": 4}, {"text": "the little fox"}, {"blank": 12}, {"text": "The end."}]
    body = {"segments": segments, "steps": 6, "seed": 4, "remasking": remasking, "block_length": 4}
    steps, done = await stream(client, body)
    fox, end = words("the little fox"), words("The end.")
    assert done["tokens"][5 : 5 + len(fox)] == fox and done["tokens"][-len(end) - 1 : -1] == end
    revealed = sorted(change["pos"] for step in steps for change in step["changed"])
    assert revealed == [*range(1, 5), *range(5 + len(fox), 17 + len(fox))]
    assert cased_tokenizer.mask_token_id not in done["tokens"]


async def test_an_edit_rewrites_only_its_spans(client):
    story = (await client.post("/generate", json={"length": 32, "steps": 8, "seed": 5, "temperature": 1.0})).json()
    spans = [{"start": 4, "end": 8}, {"start": 12, "end": 15}]
    body = {"edit": {"tokens": story["tokens"], "spans": spans}, "steps": 8, "seed": 6, "temperature": 1.0}
    steps, edited = await stream(client, body)
    inside = {*range(4, 8), *range(12, 15)}
    before, after = story["tokens"], edited["tokens"]
    assert len(after) == len(before)
    assert all(after[p] == before[p] for p in range(len(before)) if p not in inside)
    assert any(after[p] != before[p] for p in inside)  # random weights at temperature 1: it did rewrite
    assert sorted(change["pos"] for step in steps for change in step["changed"]) == sorted(inside)


async def test_infill_requests_batch_with_plain_ones_and_keep_their_seeded_stories(client):
    canvas = {"segments": [{"text": "Once upon a time"}, {"blank": 30}, {"text": "The end."}]}
    requests = [
        {**canvas, "steps": 200, "seed": 8, "temperature": 1.0},
        {"prompt": "A fox", "length": 40, "steps": 200, "seed": 9, "temperature": 1.0},
        {"ending": "They slept.", "length": 36, "steps": 150, "seed": 10, "remasking": "low_confidence"},
    ]
    alone = [(await client.post("/generate", json=request)).json()["tokens"] for request in requests]
    before = (await client.get("/info")).json()["engine"]
    together = await asyncio.gather(*(client.post("/generate", json=request) for request in requests))
    after = (await client.get("/info")).json()["engine"]
    assert [response.json()["tokens"] for response in together] == alone
    shared = {int(size): n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    assert max(size for size, n in shared.items() if n > 0) > 1  # they did run in one batch


TOKENS = [101, 2857, 1852, 170, 1159, 117, 170, 17594, 119, 102]


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"segments": [{"text": "a"}, {"blank": 0}]}, ["body", "segments", 1, "blank", "blank"], "greater than or"),
        ({"segments": []}, ["body", "segments"], "at least 1 item"),
        ({"segments": [{"txt": "a"}]}, ["body", "segments", 0], "A segment is"),
        ({"segments": [{"text": "only text"}]}, ["body", "segments"], "add a blank"),
        ({"segments": [{"text": " "}, {"blank": 2}]}, ["body", "segments"], "empty text"),
        ({"segments": [{"text": "a"}, {"blank": 80}]}, ["body", "segments"], "more than the model's 64 positions"),
        ({"segments": [{"blank": 2, "flexible": True}, {"text": "a"}]}, ["body", "segments"], "only the last blank"),
        ({"segments": [{"blank": 2}], "prompt": "a"}, ["body"], "takes no `prompt`"),
        ({"segments": [{"blank": 2}], "length": 9}, ["body"], "takes no `length`"),
        ({"edit": {"tokens": TOKENS, "spans": [{"start": 1, "end": 2}]}, "ending": "x"}, ["body"], "no `ending`"),
        (
            {"edit": {"tokens": TOKENS, "spans": [{"start": 1, "end": 4}, {"start": 3, "end": 5}]}},
            ["body", "edit"],
            "overlap",
        ),
        ({"edit": {"tokens": TOKENS, "spans": [{"start": 8, "end": 12}]}}, ["body", "edit"], "not a non-empty span"),
        ({"edit": {"tokens": TOKENS, "spans": [{"start": 3, "end": 3}]}}, ["body", "edit"], "not a non-empty span"),
        ({"edit": {"tokens": TOKENS, "spans": []}}, ["body", "edit", "spans"], "at least 1 item"),
        ({"edit": {"tokens": [101, 103, 102], "spans": [{"start": 0, "end": 1}]}}, ["body", "edit"], "mask token"),
        ({"edit": {"tokens": [101, 10**6], "spans": [{"start": 0, "end": 1}]}}, ["body", "edit"], "not a token"),
        ({"ending": "The end.", "prompt": "Once upon a time", "length": 8}, ["body", "ending"], "leaves no blank"),
        ({"ending": "The end.", "length": 100}, ["body", "length"], "maximum positions"),
    ],
)
async def test_canvases_the_model_cannot_write_are_422_with_the_reason(client, body, loc, message):
    response = await client.post("/generate", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(error["loc"] == loc and message in error["msg"] for error in detail), detail


async def test_the_canvas_route_shows_where_the_fixed_text_lies(client, cased_tokenizer):
    body = {"segments": [{"text": "Once upon a time"}, {"blank": 7}, {"text": "The end."}], "steps": 4, "seed": 2}
    layout = (await client.post("/canvas", json=body)).json()
    story = (await client.post("/generate", json=body)).json()
    assert layout["length"] == story["length"] == 1 + 4 + 7 + 3 + 1
    assert layout["blanks"] == [[5, 12]]
    assert [token["pos"] for token in layout["fixed"]] == [*range(5), *range(12, 16)]
    assert [token["id"] for token in layout["fixed"]] == [story["tokens"][t["pos"]] for t in layout["fixed"]]
    assert [token["text"] for token in layout["fixed"]][:2] == ["[CLS]", "Once"]
    plain = (await client.post("/canvas", json={"prompt": "A fox", "length": 20})).json()
    assert plain["blanks"] == [[3, 20]] and len(plain["fixed"]) == 3  # a prompt is fixed text too
    refused = await client.post("/canvas", json={"segments": [{"text": "a"}, {"blank": 90}]})
    assert refused.status_code == 422 and "64 positions" in refused.json()["detail"][0]["msg"]
