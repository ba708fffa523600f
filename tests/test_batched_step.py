"""The batched step against a plain per-request reference, and exact batch invariance in the engine."""

from __future__ import annotations

import math

import pytest
import torch

from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.sampling import SamplerRows, apply_step, diffusion_time, initial_tokens, plan_step
from app.engine import Engine, Finished, GenerationSpec, StepUpdate
from tests.support.engine import run_all

VOCAB, MASK, PAD = 50, 1, 0


def row_local_logits(x: torch.Tensor, query: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """Logits that depend only on a position's own row (its tokens and the position): a stand-in model
    with no cross-row float noise, so any difference between batched and alone is the sampler's."""
    if query.dtype == torch.bool:
        rows, positions = query.nonzero(as_tuple=True)
    else:  # the engine's flat indices into B * L
        rows, positions = query // x.shape[1], query % x.shape[1]
    seen = torch.where(x == MASK, 0, x).sum(dim=1)  # (B,) the row's revealed tokens
    keys = seen[rows] * 31 + positions * 7  # (N,)
    grid = torch.arange(VOCAB)
    return torch.sin(keys[:, None].double() * 0.37 + grid * 1.3).float() * 4  # (N, V)


def draw(seed: int, index: int, position: int, purpose: Purpose) -> float:
    return float(uniform(torch.tensor(seed), torch.tensor(index), torch.tensor(position), purpose))


def reference_token(logits: torch.Tensor, cfg: SamplerSettings, u: float) -> tuple[int, float]:
    """One position's token, written plainly: argmax, or top-k / nucleus then an inverse-CDF draw."""
    logits = logits.double().clone()
    logits[MASK] = -math.inf
    model_probs = logits.softmax(-1)
    if cfg.temperature == 0:
        token = int(logits.argmax())
        return token, float(model_probs[token])
    filtered = bool(cfg.top_k) or cfg.top_p is not None
    # the draw walks the tokens in descending order when a filter needs it, else in vocabulary order
    order = logits.argsort(descending=True).tolist() if filtered else list(range(len(logits)))
    kept, mass = [], 0.0
    for rank, token in enumerate(order):
        if (cfg.top_k and rank >= cfg.top_k) or (cfg.top_p is not None and rank > 0 and mass >= cfg.top_p):
            break
        kept.append(token)
        mass += float(model_probs[token])
    top = float(logits.max())
    weights = [math.exp((float(logits[t]) - top) / cfg.temperature) for t in kept]
    target, running = u * sum(weights), 0.0
    for token, weight in zip(kept, weights, strict=True):
        running += weight
        if running > target:
            return token, float(model_probs[token])
    return kept[-1], float(model_probs[kept[-1]])


def reference_step(x: list[int], index: int, cfg: SamplerSettings, seed: int) -> list[int]:
    """One request's step on its own, position by position."""
    t, s = diffusion_time(index, cfg.steps), diffusion_time(index + 1, cfg.steps)
    masked = [p for p, token in enumerate(x) if token == MASK]
    if cfg.remasking is Remasking.RANDOM:
        candidates = [p for p in masked if draw(seed, index, p, Purpose.REMASK) >= s / t]
        k = len(candidates)
    else:
        remaining = cfg.steps - index
        k = len(masked) - len(masked) * (remaining - 1) // remaining
        candidates = masked
        if cfg.block_length and k:
            last_block = masked[k - 1] // cfg.block_length
            candidates = [p for p in masked if p // cfg.block_length <= last_block]
    if not candidates:
        return x
    query = torch.zeros(1, len(x), dtype=torch.bool)
    query[0, candidates] = True
    logits = row_local_logits(torch.tensor([x]), query)
    chosen = {p: reference_token(logits[i], cfg, draw(seed, index, p, Purpose.TOKEN)) for i, p in enumerate(candidates)}
    block = (lambda p: p // cfg.block_length) if cfg.block_length else (lambda p: 0)
    ranked = sorted(candidates, key=lambda p: (block(p), -chosen[p][1], p))
    out = list(x)
    for p in ranked[:k] if cfg.remasking is Remasking.LOW_CONFIDENCE else candidates:
        out[p] = chosen[p][0]
    return out


MIXED = [
    SamplerSettings(steps=6, remasking=Remasking.RANDOM, temperature=0.0),
    SamplerSettings(steps=9, remasking=Remasking.RANDOM, temperature=1.0),
    SamplerSettings(steps=5, remasking=Remasking.RANDOM, temperature=0.7, top_k=5),
    SamplerSettings(steps=7, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0),
    SamplerSettings(steps=8, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, top_p=0.9),
    SamplerSettings(steps=6, remasking=Remasking.LOW_CONFIDENCE, temperature=1.3, block_length=4),
    SamplerSettings(steps=30, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0, block_length=3),  # T > L
    SamplerSettings(steps=4, remasking=Remasking.RANDOM, temperature=1.0, top_p=0.5, block_length=2),
]


def test_batched_steps_equal_the_per_request_reference_for_every_setting():
    length, seeds = 20, list(range(100, 100 + 2 * len(MIXED)))
    settings = MIXED * 2  # each setting twice, with different seeds and prompts
    prefixes = [list(range(2, 2 + i % 5)) for i in range(len(settings))]
    x = torch.stack([initial_tokens(prefix, length, MASK) for prefix in prefixes])
    rows = SamplerRows.build(settings, seeds)
    index = torch.zeros(len(settings), dtype=torch.long)
    expected = [row.tolist() for row in x]
    for _ in range(max(cfg.steps for cfg in settings)):
        plan = plan_step(x, index, rows, MASK)
        logits = row_local_logits(x, plan.query) if plan.query.any() else None
        x = apply_step(x, index, plan, logits, rows, MASK).x
        for i, cfg in enumerate(settings):
            if int(index[i]) < cfg.steps:
                expected[i] = reference_step(expected[i], int(index[i]), cfg, seeds[i])
        index = torch.minimum(index + 1, rows.steps)
        assert [row.tolist() for row in x] == expected
    assert not (x == MASK).any()


def run_engine(specs: list[GenerationSpec], max_batch: int) -> list[tuple[Finished, list[StepUpdate]]]:
    """Submit all `specs` at once; each request's outcome and step updates."""
    engine = Engine(row_local_logits, mask_id=MASK, pad_id=PAD, max_batch=max_batch, max_queue=len(specs))
    return run_all(engine, specs, timeout_s=60)


@pytest.mark.parametrize("mine", range(0, 16, 3))
def test_a_seeded_request_is_identical_alone_and_in_a_mixed_batch_of_16(mine):
    """Same tokens, same reveals and exactly the same probabilities: every draw is the same."""
    specs = [
        GenerationSpec(tuple(range(2, 2 + i % 4)), 12 + 3 * i, MIXED[i % len(MIXED)], seed=7 + i, stream_every=1)
        for i in range(16)
    ]
    alone = run_engine([specs[mine]], max_batch=1)[0]
    together = run_engine(specs, max_batch=16)[mine]
    assert isinstance(alone[0], Finished) and alone[0].ids == together[0].ids
    assert [(u.step, u.ids, u.changed) for u in alone[1]] == [(u.step, u.ids, u.changed) for u in together[1]]
