"""Revision sampling (ReMDM-cap): written words return to the mask, the schedule still ends unmasked,
and a stream that shows the remasks replays to the engine's drafts."""

from __future__ import annotations

import functools

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.revision import revision_rate, stay_masked
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.sampling import SamplerRows, denoise, plan_step
from app.diffusion.text import end_token_ids
from app.engine import Engine, GenerationSpec, Remask, Reveal, StepUpdate, net_changes
from tests.support.engine import run_all
from tests.support.logits import ENDS, MASK, WORD, fixed_model, peaked_logits


def test_the_rate_is_capped_so_that_the_last_step_remasks_nothing():
    steps = 16
    rows = SamplerRows.build([SamplerSettings(steps=steps, revision=0.5)], [0])
    for index in range(steps):
        t = torch.tensor([1 - index / steps], dtype=torch.float64)
        s = torch.tensor([1 - (index + 1) / steps], dtype=torch.float64)
        sigma = revision_rate(rows, t, s)
        assert 0 <= float(sigma) <= 0.5 and float(sigma * (1 - t)) <= float(s) + 1e-12  # ReMDM's cap
        assert 0 <= float(stay_masked(t, s, sigma)) <= float(s / t)
    assert float(sigma) == 0.0 and float(stay_masked(t, s, sigma)) == 0.0


@pytest.mark.parametrize("revision", [0.0, 0.05, 0.5])
def test_the_masked_fraction_after_a_step_is_still_the_schedules(revision):
    """Half of 64 x 512 positions written, half masked, at t = 1/2 of 8 steps: after the step (reveals
    and remasks together) the masked share is s = 3/8 whatever the rate, and the rate remasks words."""
    steps, index, length = 8, 4, 512
    x = torch.full((64, length), MASK)
    x[:, ::2] = WORD  # written words at even positions
    rows = SamplerRows.build([SamplerSettings(steps=steps, revision=revision)] * 64, list(range(64)))
    plan = plan_step(x, torch.full((64,), index), rows, MASK, writable=torch.ones_like(x, dtype=torch.bool))
    masked_after = ((x == MASK) & ~plan.query) | plan.remask
    assert abs(masked_after.double().mean().item() - 3 / 8) < 0.01
    assert abs(plan.remask.double().mean().item() - 0.5 * min(revision, 0.75)) < 0.01


@pytest.mark.parametrize("remasking", [Remasking.RANDOM, Remasking.LOW_CONFIDENCE])
def test_revising_rows_end_with_no_mask_and_keep_their_prompt(remasking):
    cfg = SamplerSettings(steps=12, remasking=remasking, temperature=1.0, revision=0.5)
    x = torch.full((32, 24), MASK)
    x[:, :3] = WORD + 5  # a prompt
    logits = peaked_logits([WORD] * 24, [0.3] * 24)
    remasked = 0
    for _, step in denoise(fixed_model(logits), x, SamplerRows.build([cfg] * 32, range(32)), MASK, ENDS):
        assert (step.x[:, :3] == WORD + 5).all()
        remasked += int(step.remasked.sum())
    assert remasked > 0 and not (step.x == MASK).any()


def test_a_position_keeps_only_its_latest_change():
    first, again = Reveal(3, 7, 0.5), Reveal(3, 9, 0.25)
    assert net_changes([first, Remask(3)]) == ((), (3,))
    assert net_changes([first, Remask(3), again, Reveal(4, 1, 1.0)]) == ((again, Reveal(4, 1, 1.0)), ())
    earlier = StepUpdate(1, 4, 0.75, (7,), (first,))
    assert earlier.merge(StepUpdate(2, 4, 0.5, (0,), (), (3,))).remasked == (3,)
    assert earlier.merge(StepUpdate(2, 4, 0.5, (0,), (), (3,))).changed == ()


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


@pytest.mark.parametrize("every", [1, 3])
def test_a_stream_with_remasks_replays_to_every_draft(ckpt, every):
    """Applying each step update's reveals and remasks to a canvas of masks gives the update's draft,
    also when updates carry several steps (`stream_every`) and rows of both kinds share the batch."""
    forward = functools.partial(logits_at, ckpt.model)
    engine = Engine(
        forward, mask_id=ckpt.mask_id, pad_id=ckpt.tokenizer.pad_token_id, end_ids=end_token_ids(ckpt.tokenizer)
    )
    prefix = (ckpt.tokenizer.cls_token_id, 1332)
    specs = [
        GenerationSpec(prefix, 28, SamplerSettings(steps=10, temperature=1.0, revision=rate), seed, every)
        for seed, rate in ((1, 0.4), (2, 0.0), (3, 0.4))
    ]
    remasked = 0
    for spec, (outcome, updates) in zip(specs, run_all(engine, specs), strict=True):
        canvas = list(prefix) + [ckpt.mask_id] * (spec.length - len(prefix))
        for update in updates:
            for reveal in update.changed:
                canvas[reveal.pos] = reveal.id
            for pos in update.remasked:
                canvas[pos] = ckpt.mask_id
            assert tuple(canvas) == update.ids, update.step
            remasked += len(update.remasked)
        assert tuple(canvas) == outcome.ids
        assert (spec.sampler.revision == 0) == all(not u.remasked for u in updates)
    assert remasked > 0
