"""`stream_format`: the step events as JSON (default), as deltas without the draft, or as plain draft
text; and the JSON answer's `tokens` without the PAD that fills the sequence after the story."""

from __future__ import annotations

import json

import pytest
import torch
from httpx_sse import aconnect_sse

from app.diffusion.checkpoint import load_checkpoint, save_checkpoint
from app.diffusion.text import MASK_PLACEHOLDER, prompt_ids, without_pad_tail
from tests.conftest import TINY_SEQ_LEN
from tests.support.service import Service, settings_for

pytestmark = pytest.mark.anyio
REQUEST = {"stream": True, "length": 24, "steps": 12, "seed": 3, "temperature": 1.0, "prompt": "Once upon a time"}


async def events(client, **fields) -> list[tuple[str, str]]:
    async with aconnect_sse(client, "POST", "/generate", json={**REQUEST, **fields}) as source:
        assert source.response.status_code == 200
        return [(event.event, event.data) async for event in source.aiter_sse()]


async def test_deltas_carry_the_reveals_alone_and_rebuild_the_story(client, cased_tokenizer):
    full, deltas = await events(client), await events(client, stream_format="deltas")
    steps = [json.loads(data) for name, data in deltas if name == "step"]
    assert steps and all(set(step) == {"step", "steps", "t", "masked", "changed", "remasked"} for step in steps)
    assert not any(step["remasked"] for step in steps)  # no revision sampling asked for: nothing remasked
    assert all("text" in json.loads(data) for name, data in full if name == "step")  # json: the draft too
    done, same = json.loads(deltas[-1][1]), json.loads(full[-1][1])
    assert deltas[-1][0] == "done" and (done["text"], done["tokens"]) == (same["text"], same["tokens"])
    revealed = {change["pos"]: change["id"] for step in steps for change in step["changed"]}
    tokens, pad = done["tokens"], cased_tokenizer.pad_token_id
    assert all(token == (tokens[pos] if pos < len(tokens) else pad) for pos, token in revealed.items())
    prompt = sorted(set(range(REQUEST["length"])) - set(revealed))  # never masked, so never revealed
    assert prompt == list(range(len(prompt))) and len(prompt) >= 4 and steps[-1]["masked"] == 0


@pytest.mark.parametrize("every", [1, 4])
async def test_remasked_positions_replay_to_the_story_with_revision_sampling(client, every):
    """Each event's reveals and remasks, applied in order to the masked canvas, give the final tokens, and
    each event's `masked` count; with `stream_every` the merged events still do."""
    got = await events(client, stream_format="deltas", revision=0.5, stream_every=every, seed=5)
    steps = [json.loads(data) for name, data in got if name == "step"]
    tokens = json.loads(got[-1][1])["tokens"]
    canvas: dict[int, int | None] = {}
    for step in steps:
        assert not {change["pos"] for change in step["changed"]} & set(step["remasked"])
        canvas |= {change["pos"]: change["id"] for change in step["changed"]}
        canvas |= dict.fromkeys(step["remasked"])
        assert sum(value is None for value in canvas.values()) <= step["masked"]
    assert sum(len(step["remasked"]) for step in steps) > 0
    assert steps[-1]["masked"] == 0 and all(value is not None for value in canvas.values())
    assert all(tokens[pos] == token for pos, token in canvas.items() if pos < len(tokens))


async def test_a_revision_rate_out_of_bounds_is_a_422_naming_the_field(client):
    response = await client.post("/generate", json={**REQUEST, "revision": 0.9})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "revision"]


async def test_text_is_the_plain_draft_and_ends_as_the_story(client):
    got = await events(client, stream_format="text")
    drafts = [data for name, data in got if name == "step"]
    assert MASK_PLACEHOLDER in drafts[0] and not drafts[0].startswith("{")
    assert drafts[0].startswith("Once upon a time")  # the prompt is kept from the first step
    name, done = got[-1]
    assert name == "done" and drafts[-1] == json.loads(done)["text"]  # done stays JSON: seed, tokens


async def test_an_unknown_format_is_a_422_naming_the_field(client):
    response = await client.post("/generate", json={**REQUEST, "stream_format": "xml"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "stream_format"]


async def test_tokens_leave_out_the_pad_tail(tmp_path, tiny_checkpoint_dir):
    """A model that predicts PAD everywhere: the answer's tokens are the prompt alone."""
    checkpoint = load_checkpoint(tiny_checkpoint_dir, device="cpu")
    pad_id = checkpoint.tokenizer.pad_token_id
    with torch.no_grad():
        checkpoint.model.vocab_projector.bias[pad_id] = 1e4
    save_checkpoint(tmp_path / "pad", checkpoint.model, checkpoint.tokenizer, checkpoint.config)
    async with Service(settings_for(tmp_path / "pad")) as client:
        body = (await client.post("/generate", json={"prompt": "Once upon a time", "seed": 1})).json()
    assert body["length"] == TINY_SEQ_LEN and body["text"] == "Once upon a time"
    assert body["tokens"] == prompt_ids(checkpoint.tokenizer, "Once upon a time")


async def test_without_pad_tail_keeps_inner_pads():
    assert without_pad_tail([5, 0, 6, 0, 0], 0) == [5, 0, 6]
    assert without_pad_tail([0, 0], 0) == [] and without_pad_tail([1, 2], None) == [1, 2]
