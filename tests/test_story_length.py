"""Where a story ends (`endings`): length_first draws the end at the first step from the model's end
probabilities along the masked tail, writes it at once and no end token elsewhere; calibrated draws each
end at the model's own probability, whatever the temperature."""

from __future__ import annotations

import math

import pytest
import torch

from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_settings import Endings, Remasking, SamplerSettings
from app.diffusion.sampling import SamplerRows, denoise
from tests.support.logits import ENDS, MASK, PAD, VOCAB, WORD, fixed_model, peaked_logits

LENGTH = 24


def rising_end_logits(length: int = LENGTH) -> torch.Tensor:
    """A model whose PAD probability at position p grows as (p + 1) / length (a story of uniform length),
    and which is surer of that PAD than of any word wherever PAD is likelier than not."""
    logits = torch.empty(length, VOCAB)
    for p in range(length):
        pad = (p + 1) / length * 0.999
        logits[p] = math.log((1 - pad) / (VOCAB - 2))
        logits[p, PAD] = math.log(pad)
    logits[:, MASK] = -30.0
    return logits


def drawn_end(seed: int, logits: torch.Tensor) -> int:
    """Where the length rule must end a story: the first position whose running-maximum PAD probability
    exceeds the row's uniform draw."""
    u = float(uniform(torch.tensor(seed), torch.tensor(0), torch.tensor(0), Purpose.LENGTH))
    pad = logits.float().softmax(dim=-1)[:, PAD]
    cdf = torch.cummax(pad, dim=0).values
    above = (cdf > u).nonzero()
    return int(above[0]) if above.numel() else logits.shape[0]


def run(cfg: SamplerSettings, seeds: list[int], logits: torch.Tensor, x: torch.Tensor | None = None):
    x = torch.full((len(seeds), logits.shape[0]), MASK) if x is None else x
    return list(denoise(fixed_model(logits), x, SamplerRows.build([cfg] * len(seeds), seeds), MASK, ENDS))


LENGTH_FIRST = [
    SamplerSettings(steps=8, remasking=Remasking.THRESHOLD, confidence_threshold=0.9, endings=Endings.LENGTH_FIRST),
    SamplerSettings(steps=8, remasking=Remasking.ENTROPY_BOUND, entropy_budget=2.0, endings=Endings.LENGTH_FIRST),
    SamplerSettings(steps=8, remasking=Remasking.LOW_CONFIDENCE, endings=Endings.LENGTH_FIRST),
    SamplerSettings(steps=8, remasking=Remasking.RANDOM, temperature=0.8, top_p=0.9, endings=Endings.LENGTH_FIRST),
]


@pytest.mark.parametrize("cfg", LENGTH_FIRST, ids=lambda c: c.remasking.value)
def test_the_first_step_writes_the_drawn_end_and_no_other_end_token_is_ever_written(cfg):
    logits = rising_end_logits()
    seeds = list(range(12))
    steps = run(cfg, seeds, logits)
    first = steps[0][1]
    for row, seed in enumerate(seeds):
        end = drawn_end(seed, logits)
        pads = sorted(first.positions[(first.rows == row) & (first.token_ids == PAD)].tolist())
        assert pads == list(range(end, LENGTH)), "the tail from the drawn end, at the first step"
        final = steps[-1][1].x[row]
        assert (final[:end] != PAD).all() and (final[end:] == PAD).all()
        assert not (final == MASK).any()


def test_without_it_a_confident_rule_ends_every_story_where_pad_first_wins():
    """The failure length-first removes: argmax PAD from position 3 on, so every story ends by then."""
    cfg = SamplerSettings(steps=8, remasking=Remasking.THRESHOLD, confidence_threshold=0.9)
    ends = [int((row == PAD).nonzero()[0]) for row in run(cfg, list(range(12)), rising_end_logits())[-1][1].x]
    assert max(ends) <= 3
    chosen = [drawn_end(seed, rising_end_logits()) for seed in range(12)]
    assert len(set(chosen)) > 4 and sum(chosen) / len(chosen) > 6, "with it, lengths spread over the sequence"


def test_the_lengths_follow_the_models_distribution():
    """Uniform lengths in the model's belief (PAD at p with probability (p + 1) / L): uniform draws."""
    cfg = LENGTH_FIRST[0]
    seeds = list(range(400))
    ends = [
        int((row != PAD).sum()) for row in run(cfg.model_copy(update={"steps": 2}), seeds, rising_end_logits())[-1][1].x
    ]
    expected = sum(1 - (p + 1) / LENGTH * 0.999 for p in range(LENGTH))  # E[end] = sum of P(end > p)
    assert abs(sum(ends) / len(ends) - expected) < 1.0


def test_a_canvas_with_a_fixed_end_keeps_it_and_gets_no_end_token_inside():
    """No masked tail (the last position is fixed text): nothing to draw, and the blank is all words even
    where the model is sure of PAD."""
    logits = peaked_logits([PAD] * LENGTH, [0.99] * LENGTH)
    x = torch.full((1, LENGTH), MASK)
    x[0, -3:] = WORD
    final = run(LENGTH_FIRST[0], [5], logits, x)[-1][1].x[0]
    assert not (final == PAD).any() and not (final == MASK).any()


def test_a_length_first_row_is_the_same_alone_and_in_a_mixed_batch():
    logits = rising_end_logits()
    others = [
        SamplerSettings(steps=8, remasking=Remasking.RANDOM, temperature=1.0),
        SamplerSettings(steps=5, remasking=Remasking.THRESHOLD, confidence_threshold=0.5, guard_endings=True),
    ]
    mixed = [LENGTH_FIRST[0], others[0], LENGTH_FIRST[3], others[1]]
    x = torch.full((len(mixed), LENGTH), MASK)
    rows = SamplerRows.build(mixed, [3, 4, 5, 6])
    together = list(denoise(fixed_model(logits), x, rows, MASK, ENDS))[-1][1].x
    for i, cfg in enumerate(mixed):
        alone = run(cfg, [3 + i], logits)[-1][1].x[0]
        assert torch.equal(alone, together[i]), cfg


def test_calibrated_endings_end_at_the_models_probability_whatever_the_temperature():
    """PAD 0.4 likely everywhere, the rest spread over words, one step: at temperature 0.1 sampled endings
    start almost every story with PAD (it is the top token); calibrated ones end each position at the
    model's 0.4, so a story's first word survives in 60% of rows and its length is geometric (mean 1.5)."""
    logits = peaked_logits([PAD] * 16, [0.4] * 16)
    seeds = list(range(1000))

    def lengths(endings: Endings) -> torch.Tensor:
        cfg = SamplerSettings(steps=1, remasking=Remasking.RANDOM, temperature=0.1, endings=endings)
        x = run(cfg, seeds, logits)[-1][1].x  # (B, L)
        return (x != PAD).long().cumprod(dim=1).sum(dim=1).float()  # (B,) words before the first PAD

    assert float((lengths(Endings.SAMPLED) > 0).float().mean()) < 0.05
    calibrated = lengths(Endings.CALIBRATED)
    assert abs(float((calibrated > 0).float().mean()) - 0.6) < 0.04
    assert abs(float(calibrated.mean()) - 1.5) < 0.15
