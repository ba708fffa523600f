"""Every story is one contiguous text: words, then only end tokens, at every step and under every rule.

Models whose end tokens are likely mid-story (constructed logits, and a tiny DistilBERT whose PAD bias is
raised) make the calibrated and length-first draws fire, so these tests also show that each row draws the
same numbers alone and at any position of a mixed batch with padding under a real attention mask.
"""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.logits import logits_at
from app.diffusion.sampler_settings import Endings, Remasking, SamplerSettings
from app.diffusion.sampling import SamplerRows, denoise, initial_tokens
from app.diffusion.text import end_token_ids
from app.engine import Engine, Finished, GenerationSpec, StepUpdate
from tests.support.engine import run_all
from tests.support.logits import ENDS, MASK, PAD, WORD, fixed_model, peaked_logits

RULES = {
    Remasking.RANDOM: {},
    Remasking.LOW_CONFIDENCE: {},
    Remasking.THRESHOLD: {"confidence_threshold": 0.5},
    Remasking.ENTROPY_BOUND: {"entropy_budget": 1.0},
}
EVERY_RULE = [
    SamplerSettings(steps=8, remasking=remasking, endings=endings, temperature=1.0, block_length=blocks, **extra)
    for (remasking, extra), endings, blocks in itertools.product(RULES.items(), Endings, (None, 4))
    if not (remasking is Remasking.RANDOM and blocks)  # random remasking ranks nothing to put in blocks
]
REVISING = [cfg.model_copy(update={"revision": 0.3}) for cfg in EVERY_RULE]
"""Every rule with revision sampling, its rate high enough that 8 steps remask words."""


def label(cfg: SamplerSettings) -> str:
    revising = f"-revision{cfg.revision}" if cfg.revision else ""
    return f"{cfg.remasking.value}-{cfg.endings.value}-blocks{cfg.block_length or 0}{revising}"


def assert_contiguous(x: torch.Tensor, end_ids: torch.Tensor, mask_id: int) -> None:
    """Each row of `x` (B, L): no word and no mask after an end token."""
    is_end = torch.isin(x, end_ids)
    after_an_end = (is_end.long().cumsum(dim=1) - is_end.long()) > 0  # (B, L)
    assert not (after_an_end & ~is_end).any(), [row.tolist() for row in x]


def end_likely_logits(length: int, p_end: float = 0.35) -> torch.Tensor:
    """PAD `p_end` likely at every position (mid-story included), WORD the likeliest word."""
    logits = peaked_logits([WORD] * length, [0.4] * length)
    logits[:, PAD] = torch.log(torch.tensor(p_end))
    return logits


@pytest.mark.parametrize("cfg", EVERY_RULE + REVISING, ids=label)
def test_no_word_or_mask_follows_an_end_token_at_any_step(cfg):
    """With a prompt and a pinned word in the middle, over 24 seeds: a revealed end token ends the story
    at once (the masks after it become PAD), no end token is written before a word, and the pinned word
    keeps the story from ending before it. With revision sampling, only written words return to the
    mask (never the prompt, the pinned word nor an end token), and none is left masked at the end."""
    length, pinned = 20, ((9, WORD + 1),)
    x = torch.stack([initial_tokens([WORD + 2, WORD + 2], length, MASK, pinned=pinned)] * 24)
    rows = SamplerRows.build([cfg] * 24, list(range(24)))
    saw_an_early_end, remasked = False, 0
    for _, step in denoise(fixed_model(end_likely_logits(length)), x, rows, MASK, ENDS):
        assert_contiguous(torch.where(step.x == MASK, WORD, step.x), ENDS.ids, MASK)  # masks count as words
        assert (step.x[:, 9] == WORD + 1).all() and (step.x[:, :2] == WORD + 2).all()
        assert not (torch.isin(x, ENDS.ids) & (step.x != x)).any()  # an end token, once written, stays
        assert ((x != MASK) & (step.x == MASK) == step.remasked).all()
        saw_an_early_end |= bool((step.x[:, 10:-1] == PAD).any())
        remasked += int(step.remasked.sum())
        x, last = step.x, step
    assert not (last.x == MASK).any()
    assert_contiguous(last.x, ENDS.ids, MASK)
    assert saw_an_early_end  # the end probability really fired mid-story
    assert (last.x[:, 2:10] != PAD).all()  # before the pinned word: words only
    assert (remasked > 0) == (cfg.revision > 0)  # revisions really happened (and only when asked for)


def test_the_tail_after_an_end_is_revealed_in_the_same_step_with_probability_one():
    cfg = SamplerSettings(steps=4, remasking=Remasking.RANDOM, endings=Endings.SAMPLED, temperature=1.0)
    x = torch.full((64, 12), MASK)
    for _, step in denoise(
        fixed_model(end_likely_logits(12, 0.5)), x, SamplerRows.build([cfg] * 64, range(64)), MASK, ENDS
    ):
        filled = step.probs == 1.0
        assert (step.token_ids[filled] == PAD).all()
        ended_rows = set(step.rows[step.token_ids == PAD].tolist())
        for row in ended_rows:
            assert not (step.x[row, int((step.x[row] == PAD).nonzero()[0]) :] == MASK).any()
        x = step.x
    assert (x[:, 0] != MASK).all()


def end_prone(model: torch.nn.Module, end_ids: list[int], boost: float = 9.0) -> torch.nn.Module:
    """A copy of a tiny random DistilBERT whose end tokens are likely everywhere (about 0.1-0.5 each
    position), so that the endings rules draw ends mid-story."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.vocab_projector.bias[end_ids] += boost
    return model


@pytest.fixture(scope="module")
def prone(tiny_checkpoint_dir):
    ckpt = load_checkpoint(tiny_checkpoint_dir, device="cpu")
    return ckpt, end_prone(ckpt.model, [ckpt.tokenizer.pad_token_id])


def mixed_specs(ckpt) -> list[GenerationSpec]:
    """Every remasking x endings rule, blocks on and off, prompts and pinned words, lengths 20 to 38, every
    other one revising."""
    specs = []
    for i, cfg in enumerate(EVERY_RULE):
        cfg = cfg.model_copy(update={"revision": 0.2 if i % 2 else 0.0})  # revising rows among the others
        length = 20 + (i * 5) % 19
        prefix = (ckpt.tokenizer.cls_token_id, 1332 + i) if i % 2 else (ckpt.tokenizer.cls_token_id,)
        pinned = ((length // 2, 1235),) if i % 3 == 0 else ()
        specs.append(GenerationSpec(prefix, length, cfg, seed=40 + i, stream_every=1, pinned=pinned))
    return specs


def run_engine(ckpt, model, specs: list[GenerationSpec]) -> list[tuple[Finished, list[StepUpdate]]]:
    """All `specs` submitted at once to one engine on `model`; each outcome and its step updates."""
    ends = sorted(end_token_ids(ckpt.tokenizer))
    forward = functools.partial(logits_at, model)
    pad = ckpt.tokenizer.pad_token_id
    return run_all(Engine(forward, mask_id=ckpt.mask_id, pad_id=pad, end_ids=ends, max_batch=64, max_queue=64), specs)


def test_every_rule_is_the_same_alone_and_anywhere_in_a_mixed_batch(prone):
    """Each request alone, then all together in one order and in the reverse: every row sits at a batch
    position other than its alone one at least once, so a draw that depended on the row's place in the
    batch (rather than its seed) would change its story."""
    ckpt, model = prone
    specs = mixed_specs(ckpt)
    alone = [run_engine(ckpt, model, [spec])[0] for spec in specs]
    forward = run_engine(ckpt, model, specs)
    backward = run_engine(ckpt, model, specs[::-1])[::-1]
    end_ids = torch.tensor(sorted(end_token_ids(ckpt.tokenizer)))
    ended_early = remasked = 0
    for spec, one, *batched in zip(specs, alone, forward, backward, strict=True):
        assert isinstance(one[0], Finished), spec
        ids = torch.tensor([one[0].ids])
        assert_contiguous(ids, end_ids, ckpt.mask_id)
        ended_early += bool(torch.isin(ids[0, len(spec.prefix) :], end_ids)[: spec.length // 2].any())
        remasked += sum(len(u.remasked) for u in one[1])
        for together in batched:
            assert together[0].ids == one[0].ids, label(spec.sampler)
            assert [(u.step, [(r.pos, r.id) for r in u.changed], u.remasked) for u in together[1]] == [
                (u.step, [(r.pos, r.id) for r in u.changed], u.remasked) for u in one[1]
            ], label(spec.sampler)
    assert ended_early >= len(specs) // 4  # the end draws fired, so their batch-invariance was tested
    assert remasked > 0  # so did the revision draws


def test_sample_applies_the_endings_rules_like_the_engine(prone):
    """`sample` (CLI, evaluation, benchmarks) writes the engine's story for the same settings and seed."""
    ckpt, model = prone
    specs = [s for s in mixed_specs(ckpt) if not s.pinned and len(s.prefix) == 1][:4]
    for spec in specs:
        ((outcome, _),) = run_engine(ckpt, model, [spec])
        *_, (_, last) = sample(model, ckpt.tokenizer, spec.sampler, [spec.seed], spec.length, [spec.prefix])
        assert last.x[0].tolist() == list(outcome.ids), label(spec.sampler)
