"""Masked-diffusion samplers: pure, batch-first steps over token tensors, and a generator loop.

A step at time t (from 1 down to 0 in `num_steps` linear steps, s the next t) chooses which masked
positions to reveal, asks the model for logits at those positions only, and writes tokens there:

- `random` is the reference sampler (Nie et al. 2025, Algorithm 4; MDLM): every masked position
  stays masked with probability s/t. The draw does not depend on the logits, so it is made first:
  a step that reveals nothing skips the model (MDLM's cache trick, without a cache).
- `low_confidence` (LLaDA): predict every masked position and keep the k most confident, with k
  from the linear schedule so that the expected masked fraction is s, and none is left at t = 0.
  With `block_length`, it is LLaDA's semi-autoregressive remasking: the sequence is cut into blocks
  that are revealed left to right, so the k of a step come from the leftmost block that still has
  masks (and the next ones, if k is larger). Without blocks, a model that pads its stories with
  confident PAD tokens fills the tail first and ends the story before it starts.

Tokens are chosen with temperature (0 = argmax), top-k and top-p; sampling uses the Gumbel-max
trick in float64, since float32 Gumbel noise measurably narrows the distribution (Zheng et al. 2024,
arXiv 2409.02908). The mask token is never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from app.diffusion.sampler_settings import Remasking
from app.diffusion.sampler_settings import SamplerSettings as SamplerConfig


@dataclass(frozen=True)
class StepPlan:
    """Which positions a step needs logits for, decided before the model runs."""

    index: int  # 0-based step about to run
    query: torch.Tensor  # (B, L) bool: positions that need logits
    reveal_counts: torch.Tensor | None  # (B,) low_confidence: how many to keep per row


@dataclass(frozen=True)
class Step:
    """What one denoising step did: the new state and the positions it revealed."""

    index: int  # 1-based number of steps done
    num_steps: int
    t: float  # time after this step: 1 - index / num_steps
    x: torch.Tensor  # (B, L) tokens after the step
    rows: torch.Tensor  # (N,) row of each revealed position
    positions: torch.Tensor  # (N,)
    token_ids: torch.Tensor  # (N,)
    probs: torch.Tensor  # (N,) model probability of each revealed token
    model_called: bool


LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, L), query (B, L) bool) -> float logits (N, V) at the query positions, row-major."""


def step_times(index: int, num_steps: int) -> tuple[float, float]:
    """(t, s): the time at the start of step `index` (0-based) and the time after it."""
    return 1 - index / num_steps, 1 - (index + 1) / num_steps


def initial_tokens(prefix: list[int], length: int, mask_id: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(length,) ids: the fixed prefix (a prompt) followed by masks."""
    if len(prefix) > length:
        raise ValueError(f"the prompt takes {len(prefix)} tokens, more than the length {length}")
    x = torch.full((length,), mask_id, dtype=torch.long, device=device)
    x[: len(prefix)] = torch.tensor(prefix, dtype=torch.long, device=device)
    return x


def plan_step(x: torch.Tensor, index: int, cfg: SamplerConfig, mask_id: int, generator: torch.Generator) -> StepPlan:
    """Decide, before the model runs, which positions step `index` may reveal."""
    masked = x == mask_id  # (B, L)
    t, s = step_times(index, cfg.steps)
    if cfg.remasking is Remasking.RANDOM:
        remask = torch.rand(x.shape, generator=generator, device=x.device) < s / t  # (B, L)
        return StepPlan(index, masked & ~remask, None)
    remaining = cfg.steps - index
    n_masked = masked.sum(dim=1)  # (B,)
    counts = n_masked - torch.div(n_masked * (remaining - 1), remaining, rounding_mode="floor")
    query = masked & (counts > 0).unsqueeze(1)
    if cfg.block_length is not None:
        query &= _up_to_block_of_kth_mask(masked, counts, cfg.block_length)
    return StepPlan(index, query, counts)


def _block_index(length: int, block_length: int, device: torch.device) -> torch.Tensor:
    """(L,) the block of each position."""
    return torch.arange(length, device=device) // block_length


def _up_to_block_of_kth_mask(masked: torch.Tensor, counts: torch.Tensor, block_length: int) -> torch.Tensor:
    """(B, L) bool: positions in the blocks up to the one holding each row's `counts`-th masked position,
    the only blocks a semi-autoregressive step can reveal from."""
    kth = masked & (masked.cumsum(dim=1) == counts.unsqueeze(1))  # (B, L): at most one per row
    blocks = _block_index(masked.shape[1], block_length, masked.device)  # (L,)
    last_block = (kth * blocks).sum(dim=1)  # (B,); 0 for rows that reveal nothing
    return blocks.unsqueeze(0) <= last_block.unsqueeze(1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Logits (N, V) with everything outside the top-k and the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keeps the top token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def choose_tokens(
    logits: torch.Tensor, cfg: SamplerConfig, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N,) and their model probabilities (N,) from logits (N, V)."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    probs = logits.softmax(dim=-1)  # (N, V) the model's own distribution, for confidence
    if cfg.temperature == 0:
        ids = logits.argmax(dim=-1)
    else:
        scores = filter_logits(logits, cfg.top_k, cfg.top_p).double() / cfg.temperature
        u = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        ids = (scores + gumbel).argmax(dim=-1)
    return ids, probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _keep_most_confident(plan: StepPlan, probs: torch.Tensor, block_length: int | None) -> torch.Tensor:
    """(N,) bool over the queried positions: the `reveal_counts` most confident of each row; with
    blocks, every position of an earlier block before any of a later one."""
    assert plan.reveal_counts is not None
    confidence = torch.full(plan.query.shape, -math.inf, device=probs.device)  # (B, L)
    confidence[plan.query] = probs.float()
    if block_length is not None:  # probabilities lie in [0, 1]: 2 per block puts blocks first
        confidence = confidence - 2.0 * _block_index(plan.query.shape[1], block_length, probs.device)
    order = confidence.argsort(dim=1, descending=True, stable=True)  # (B, L)
    rank = order.argsort(dim=1)  # (B, L) rank of each position within its row
    keep = rank < plan.reveal_counts.unsqueeze(1)  # (B, L)
    return keep[plan.query]


def apply_step(
    x: torch.Tensor,
    plan: StepPlan,
    logits: torch.Tensor | None,
    cfg: SamplerConfig,
    mask_id: int,
    generator: torch.Generator,
) -> Step:
    """Write the chosen tokens into a copy of `x`; `logits` (N, V) are at `plan.query`."""
    _, s = step_times(plan.index, cfg.steps)
    rows, positions = plan.query.nonzero(as_tuple=True)  # (N,), (N,)
    if logits is None or rows.numel() == 0:
        empty = rows[:0]
        return Step(plan.index + 1, cfg.steps, s, x, empty, empty, empty, empty.float(), False)
    ids, probs = choose_tokens(logits, cfg, mask_id, generator)
    if cfg.remasking is Remasking.LOW_CONFIDENCE:
        keep = _keep_most_confident(plan, probs, cfg.block_length)
        rows, positions, ids, probs = rows[keep], positions[keep], ids[keep], probs[keep]
    x = x.clone()
    x[rows, positions] = ids
    return Step(plan.index + 1, cfg.steps, s, x, rows, positions, ids, probs, True)


def denoise(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    cfg: SamplerConfig,
    mask_id: int,
    generator: torch.Generator,
) -> Iterator[Step]:
    """Run all `cfg.steps` steps from `x` (B, L), yielding each `Step`; the last has no masks."""
    for index in range(cfg.steps):
        plan = plan_step(x, index, cfg, mask_id, generator)
        logits = logits_fn(x, plan.query) if plan.query.any() else None
        step = apply_step(x, plan, logits, cfg, mask_id, generator)
        x = step.x
        yield step
