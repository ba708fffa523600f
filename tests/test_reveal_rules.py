"""The fast decoding rules (threshold, entropy_bound) and the end-token guard, on constructed logits and
on a tiny random DistilBERT: what each step reveals, and what no step may do."""

from __future__ import annotations

import math

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.generation import story_ends
from app.diffusion.logits import logits_at
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.sampling import SamplerRows, denoise, initial_tokens
from app.diffusion.text import prompt_ids
from tests.support.logits import ENDS, MASK, PAD, VOCAB, WORD, fixed_model, peaked_logits


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


def entropy_of(mass: float) -> float:
    """Entropy (nats) of a `peaked_logits` distribution with `mass` on its top token."""
    rest = (1 - mass) / (VOCAB - 2)
    return -(mass * math.log(mass) + (VOCAB - 2) * rest * math.log(rest))


def first_step(logits: torch.Tensor, cfg: SamplerSettings):
    x = torch.full((1, logits.shape[0]), MASK)
    return next(denoise(fixed_model(logits), x, SamplerRows.build([cfg], [0]), MASK, ENDS))[1]


P = [0.5, 0.95, 0.3, 0.91, 0.99, 0.65, 0.89, 0.2, 0.97, 0.4, 0.7, 0.8]
"""Confidence of each position's prediction (a word everywhere): four at least 0.9, one just under."""


@pytest.mark.parametrize(("tau", "expected"), [(0.9, [1, 3, 4, 8]), (0.96, [4, 8]), (0.6, [1, 3, 4, 5, 6, 8, 10, 11])])
def test_threshold_reveals_exactly_the_predictions_at_least_tau_likely(tau, expected):
    cfg = SamplerSettings(steps=12, remasking=Remasking.THRESHOLD, confidence_threshold=tau)  # k = 1
    step = first_step(peaked_logits([WORD] * len(P), P), cfg)
    assert sorted(step.positions.tolist()) == expected
    assert (step.token_ids == WORD).all()


def test_threshold_reveals_the_schedules_k_when_too_few_are_sure():
    cfg = SamplerSettings(steps=4, remasking=Remasking.THRESHOLD, confidence_threshold=0.999)  # k = 3
    step = first_step(peaked_logits([WORD] * len(P), P), cfg)
    assert sorted(step.positions.tolist()) == [1, 4, 8], "the three most confident, as low_confidence would"


def test_entropy_bound_reveals_the_most_confident_within_the_budget():
    logits = peaked_logits([WORD] * len(P), P)
    by_confidence = sorted(range(len(P)), key=lambda i: -P[i])  # 4, 8, 1, 3, 6, ...
    spent = [sum(entropy_of(P[i]) for i in by_confidence[: n + 1]) for n in range(len(P))]
    for n in (2, 3, 5):  # a budget just above the n most confident predictions' summed entropy
        budget = (spent[n - 1] + spent[n]) / 2
        cfg = SamplerSettings(steps=12, remasking=Remasking.ENTROPY_BOUND, entropy_budget=budget)
        assert sorted(first_step(logits, cfg).positions.tolist()) == sorted(by_confidence[:n]), budget
    nothing_affordable = SamplerSettings(steps=6, remasking=Remasking.ENTROPY_BOUND, entropy_budget=0.0)  # k = 2
    assert sorted(first_step(logits, nothing_affordable).positions.tolist()) == [4, 8], "the floor: k"


def guarded_(cfg: SamplerSettings) -> SamplerSettings:
    return cfg.model_copy(update={"guard_endings": True})


def tail_loving_logits(length: int = 24) -> torch.Tensor:
    """A model sure of PAD almost everywhere (as a trained one is of the padding after a story):
    a word at the first positions, PAD 0.99 likely from position 4 on except for a word at 20."""
    top = [WORD] * 4 + [PAD] * (length - 4)
    top[20] = WORD
    return peaked_logits(top, [0.6] * 4 + [0.99] * (length - 4))


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerSettings(steps=8, remasking=Remasking.THRESHOLD, confidence_threshold=0.9),
        SamplerSettings(steps=8, remasking=Remasking.ENTROPY_BOUND, entropy_budget=2.0),
    ],
    ids=["threshold", "entropy_bound"],
)
def test_end_tokens_are_revealed_only_as_a_run_that_reaches_the_end(cfg):
    """Unguarded, a confident rule reveals PAD at position 4 in its first step and the story is over;
    guarded, only the PAD run after the last predicted word (21..23) may end it."""
    logits = tail_loving_logits()
    unguarded, guarded = first_step(logits, cfg), first_step(logits, guarded_(cfg))
    assert int(unguarded.positions[unguarded.token_ids == PAD].min()) == 4, "the failure the guard prevents"
    pads = guarded.positions[guarded.token_ids == PAD].tolist()
    assert pads and min(pads) >= 21
    assert set(pads) == set(range(min(pads), 24)), "a run reaching the end"


def test_a_run_is_revealed_from_its_right_end():
    """A PAD run whose left part is surer than its right part: only the sure suffix may be revealed."""
    top = [WORD] * 4 + [PAD] * 8
    logits = peaked_logits(top, [0.3] * 4 + [0.99, 0.99, 0.99, 0.99, 0.6, 0.6, 0.95, 0.95])
    cfg = SamplerSettings(steps=12, remasking=Remasking.THRESHOLD, confidence_threshold=0.9, guard_endings=True)
    step = first_step(logits, cfg)
    assert sorted(step.positions.tolist()) == [10, 11]


FAST_SETTINGS = [
    SamplerSettings(steps=16, remasking=Remasking.THRESHOLD, confidence_threshold=0.9),
    SamplerSettings(
        steps=16, remasking=Remasking.THRESHOLD, confidence_threshold=0.05, temperature=0.8, top_p=0.9,
        guard_endings=True,
    ),
    SamplerSettings(steps=50, remasking=Remasking.THRESHOLD, confidence_threshold=0.5, temperature=1.0),  # T > L
    SamplerSettings(
        steps=12, remasking=Remasking.THRESHOLD, confidence_threshold=0.2, block_length=5, guard_endings=True
    ),
    SamplerSettings(steps=16, remasking=Remasking.ENTROPY_BOUND, entropy_budget=1.0, guard_endings=True),
    SamplerSettings(steps=16, remasking=Remasking.ENTROPY_BOUND, entropy_budget=50.0, temperature=0.8, top_k=50),
    SamplerSettings(
        steps=10, remasking=Remasking.ENTROPY_BOUND, entropy_budget=20.0, block_length=8, guard_endings=True
    ),
]  # fmt: skip


@pytest.mark.parametrize("cfg", FAST_SETTINGS, ids=str)
def test_fast_rules_keep_the_sampler_invariants(ckpt, cased_tokenizer, cfg):
    """At least the schedule's k a step while masks remain, prompt and revealed tokens never change,
    no mask after the last step, and at most `steps` forwards."""
    prefix = prompt_ids(cased_tokenizer, "Once upon a time, a cat")
    length, batch = 32, 2
    x = initial_tokens(prefix, length, ckpt.mask_id).repeat(batch, 1)
    ends = story_ends(cased_tokenizer)
    forwards = 0

    def counting(x_t, query):
        nonlocal forwards
        forwards += 1
        return logits_at(ckpt.model, x_t, query)

    rows = SamplerRows.build([cfg] * batch, [3, 4])
    for index, step in denoise(counting, x, rows, ckpt.mask_id, ends):
        masked_before = (x == ckpt.mask_id).sum(dim=1)  # (B,)
        remaining = cfg.steps - int(index[0]) + 1
        for row in range(batch):
            floor = int(masked_before[row]) - int(masked_before[row]) * (remaining - 1) // remaining
            assert int((step.rows == row).sum()) >= floor
        revealed = x != ckpt.mask_id
        assert torch.equal(step.x[revealed], x[revealed]), "a revealed or prompt token changed"
        assert (step.positions >= len(prefix)).all()
        x = step.x
    assert not (x == ckpt.mask_id).any()
    assert forwards <= cfg.steps


def test_fast_rules_use_fewer_forwards_than_steps(ckpt):
    """A threshold any prediction passes reveals everything in one forward; the rest are skipped."""
    cfg = SamplerSettings(steps=32, remasking=Remasking.THRESHOLD, confidence_threshold=1e-9)
    x = initial_tokens([], 32, ckpt.mask_id).unsqueeze(0)
    steps = list(denoise(lambda x_t, q: logits_at(ckpt.model, x_t, q), x, SamplerRows.build([cfg], [0]), ckpt.mask_id))
    assert [step.model_called for _, step in steps] == [True] + [False] * 31
    assert not (steps[0][1].x == ckpt.mask_id).any()
