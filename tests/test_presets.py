"""Presets and the forward count: one merge order (defaults < checkpoint < preset < request) in the API,
the CLI and the engine, and `forwards` / `tokens_per_forward` in every answer and in /metrics."""

from __future__ import annotations

import json
import time

import pytest
from httpx_sse import aconnect_sse

from app.cli import main
from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.diffusion_config import DIFFUSION_CONFIG_NAME, DiffusionConfig
from app.diffusion.logits import logits_at
from app.diffusion.sampler_settings import (
    BUILTIN_PRESETS,
    PRESETS,
    Endings,
    Remasking,
    SamplerOverrides,
    SamplerSettings,
)
from app.diffusion.text import end_token_ids, prompt_ids
from app.engine import Engine, Finished, GenerationSpec
from tests.conftest import TINY_SEQ_LEN
from tests.support.engine import Collector
from tests.support.metrics import idle, scrape
from tests.support.service import Service, settings_for

pytestmark = pytest.mark.anyio

FAST = {"remasking": "threshold", "steps": 12, "confidence_threshold": 1e-6, "temperature": 1.0, "top_p": None}
"""The test checkpoint's own `fast`: a threshold every prediction passes, so one forward writes the story."""


@pytest.fixture(scope="module")
def preset_checkpoint(tmp_path_factory, tiny_checkpoint_dir):
    """The tiny checkpoint with a nucleus in its defaults and its own `fast` preset (no other preset)."""
    directory = tmp_path_factory.mktemp("preset-checkpoint")
    for path in tiny_checkpoint_dir.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    config = DiffusionConfig.load(directory / DIFFUSION_CONFIG_NAME)
    config.sampler = SamplerOverrides(top_p=0.5, steps=20)
    config.presets = {"fast": SamplerOverrides(**FAST)}
    config.save(directory)
    return directory


@pytest.fixture(scope="module")
async def client(preset_checkpoint):
    async with Service(settings_for(preset_checkpoint)) as client:
        yield client


def test_presets_are_saved_as_set_and_merged_in_one_order(preset_checkpoint):
    saved = json.loads((preset_checkpoint / DIFFUSION_CONFIG_NAME).read_text())
    assert saved["presets"] == {"fast": FAST}  # only the fields set: an explicit null survives
    config = DiffusionConfig.load(preset_checkpoint / DIFFUSION_CONFIG_NAME)
    fast = config.settings_for("fast")
    assert fast == SamplerSettings(steps=TINY_SEQ_LEN).override(config.sampler).override(config.presets["fast"])
    assert fast.top_p is None and fast.steps == 12  # the preset's null and value over the checkpoint's
    assert config.settings_for(None) == config.sampler_settings
    for name in ("quality", "balanced"):  # not in this checkpoint: the built-in fields
        assert config.settings_for(name) == config.sampler_settings.override(BUILTIN_PRESETS[name])


async def test_a_preset_is_the_fields_it_sets_and_explicit_fields_override_it(client):
    by_preset = (await client.post("/generate", json={"preset": "fast", "seed": 3})).json()
    spelled_out = (await client.post("/generate", json={**FAST, "seed": 3})).json()
    assert by_preset["tokens"] == spelled_out["tokens"] and by_preset["steps"] == 12
    overridden = (await client.post("/generate", json={"preset": "fast", "seed": 3, "steps": 30})).json()
    assert overridden["steps"] == 30
    defaults = (await client.post("/generate", json={"seed": 3})).json()
    assert defaults["steps"] == 20 and defaults["tokens"] != by_preset["tokens"]
    unknown = await client.post("/generate", json={"preset": "fastest"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "preset"]


async def test_info_lists_every_preset_with_its_values(client, preset_checkpoint):
    info = (await client.get("/info")).json()
    config = DiffusionConfig.load(preset_checkpoint / DIFFUSION_CONFIG_NAME)
    assert set(info["presets"]) == set(PRESETS)
    for name in PRESETS:
        assert info["presets"][name] == config.settings_for(name).model_dump(mode="json")
    assert info["presets"]["fast"]["remasking"] == "threshold" and info["presets"]["fast"]["top_p"] is None


async def test_a_checkpoint_without_presets_falls_back_to_the_built_ins(tiny_checkpoint_dir):
    assert not DiffusionConfig.load(tiny_checkpoint_dir / DIFFUSION_CONFIG_NAME).presets
    async with Service(settings_for(tiny_checkpoint_dir)) as client:
        info = (await client.get("/info")).json()
        answer = (await client.post("/generate", json={"preset": "fast", "seed": 1})).json()
    base = SamplerSettings(steps=TINY_SEQ_LEN)
    for name in PRESETS:
        assert info["presets"][name] == base.override(BUILTIN_PRESETS[name]).model_dump(mode="json")
    assert answer["steps"] == info["presets"]["fast"]["steps"]


async def test_forwards_and_tokens_per_forward_add_up(client, cased_tokenizer):
    prompt = "Once upon a time, a cat"
    written = TINY_SEQ_LEN - len(prompt_ids(cased_tokenizer, prompt))
    for body in ({"preset": "fast", "seed": 5, "prompt": prompt}, {"steps": 20, "seed": 5, "prompt": prompt}):
        answer = (await client.post("/generate", json=body)).json()
        assert 1 <= answer["forwards"] <= answer["steps"]
        assert answer["tokens_per_forward"] * answer["forwards"] == pytest.approx(written)
    fast = (await client.post("/generate", json={"preset": "fast", "seed": 5, "prompt": prompt})).json()
    assert fast["forwards"] < fast["steps"], "the fast rule reveals several tokens per forward"
    async with aconnect_sse(client, "POST", "/generate", json={"preset": "fast", "seed": 5, "prompt": prompt}) as sse:
        done = [json.loads(event.data) async for event in sse.aiter_sse() if event.event == "done"]
    assert (done[0]["forwards"], done[0]["tokens_per_forward"]) == (fast["forwards"], fast["tokens_per_forward"])


async def test_metrics_histograms_count_forwards_and_tokens_per_forward(preset_checkpoint):
    service = Service(settings_for(preset_checkpoint))
    async with service as client:
        await idle(service.engine)
        before = await scrape(client)
        answer = (await client.post("/generate", json={"preset": "fast", "seed": 8})).json()
        await idle(service.engine)
        after = await scrape(client)

    def grew(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("storydiff_request_forwards_count") == 1
    assert grew("storydiff_request_forwards_sum") == answer["forwards"]
    assert grew("storydiff_request_forwards_bucket", (("le", "+Inf"),)) == 1
    assert grew("storydiff_request_forwards_bucket", (("le", "16.0"),)) == 1  # 12 steps: at most 12 forwards
    assert grew("storydiff_request_tokens_per_forward_count") == 1
    assert grew("storydiff_request_tokens_per_forward_sum") == pytest.approx(answer["tokens_per_forward"])


def test_a_seeded_fast_story_is_the_same_alone_and_in_a_mixed_batch(tiny_checkpoint_dir):
    """Two requests with one seed and the `fast` preset with calibrated endings, among
    requests with other rules, endings and lengths."""
    ckpt = load_checkpoint(tiny_checkpoint_dir, device="cpu")
    fast = ckpt.config.settings_for("fast").model_copy(update={"temperature": 1.0, "endings": Endings.CALIBRATED})
    mine = GenerationSpec((), TINY_SEQ_LEN, fast, 11)
    others = [
        GenerationSpec((), 40, SamplerSettings(steps=16, temperature=1.0), 1),
        GenerationSpec((), 36, SamplerSettings(steps=12, remasking=Remasking.LOW_CONFIDENCE, block_length=8), 2),
        GenerationSpec((), 44, SamplerSettings(steps=20, remasking=Remasking.THRESHOLD, temperature=0.5), 3),
        GenerationSpec(
            (), 30, SamplerSettings(steps=10, remasking=Remasking.THRESHOLD, endings=Endings.LENGTH_FIRST), 4
        ),
    ]

    def slow_forward(x, query, attention_mask):
        time.sleep(0.002)  # long enough that everyone submitted shares the batch
        return logits_at(ckpt.model, x, query, attention_mask)

    def run(specs):
        ends = sorted(end_token_ids(ckpt.tokenizer))
        engine = Engine(slow_forward, mask_id=ckpt.mask_id, pad_id=ckpt.tokenizer.pad_token_id, end_ids=ends)
        engine.start()
        try:
            collectors = [Collector() for _ in specs]
            for request, collector in zip(specs, collectors, strict=True):
                engine.submit(request, collector, 60.0)
            return [collector.outcome() for collector in collectors], engine.stats.snapshot()
        finally:
            engine.stop()

    (alone,), _ = run([mine])
    batch, stats = run([others[0], mine, others[1], mine, others[2], others[3]])
    assert isinstance(alone, Finished) and all(isinstance(outcome, Finished) for outcome in batch)
    assert batch[1].ids == batch[3].ids == alone.ids
    assert batch[1].forwards == batch[3].forwards == alone.forwards
    assert stats.max_batch_size == 6


def test_the_cli_takes_a_preset_and_flags_override_it(preset_checkpoint, capsys):
    def run(*flags: str) -> dict:
        assert main(["generate", "--model", str(preset_checkpoint), "--seed", "3", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    fast, slower = run("--preset", "fast"), run("--preset", "fast", "--steps", "30")
    assert (fast["preset"], fast["remasking"], fast["steps"], fast["top_p"]) == ("fast", "threshold", 12, None)
    assert 1 <= fast["forwards"] <= 12
    assert slower["steps"] == 30 and slower["remasking"] == "threshold"
    assert run()["steps"] == 20
