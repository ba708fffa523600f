"""Masked-diffusion sampling: one batched step over many sequences, each with its own settings and seed.

A step at time t (from 1 down to 0 in `steps` linear steps, s the next t) chooses which masked
positions to reveal, asks the model for logits at those positions only, and writes tokens there:

- `random` is the reference sampler (Nie et al. 2025, Algorithm 4; MDLM): every masked position
  stays masked with probability s/t. The draw does not depend on the logits, so it is made first:
  a step that reveals nothing skips the model (MDLM's cache trick, without a cache).
- `low_confidence` (LLaDA): predict every masked position and keep the k most confident, with k
  from the linear schedule so that the expected masked fraction is s, and none is left at t = 0.
  With `block_length`, it is LLaDA's semi-autoregressive remasking: blocks are revealed left to
  right, so the k of a step come from the leftmost block that still has masks (and the next ones,
  if k is larger). Without blocks, a model that pads its stories with confident PAD tokens fills
  the tail first and ends the story before it starts, unless the row's `endings` is `length_first`.

Where a story ends is the `endings` setting (`story_length`): end tokens sampled like any token,
drawn at the model's own probability (`calibrated`), or the length drawn first (`length_first`).

Every row carries its own settings as (B,) tensors (`SamplerRows`), so rows with different settings
share every kernel of a step. Random numbers come from `randomness.uniform` keyed by (seed, step,
position): a row draws the same numbers alone or in any batch. Tokens are chosen with temperature
(0 = argmax), top-k and top-p, by inverse-CDF sampling in float64 with one uniform per position
(low-precision sampling measurably narrows the distribution: Zheng et al. 2024, arXiv 2409.02908).
The mask token is never chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from app.diffusion.randomness import Purpose, uniform
from app.diffusion.reveal_rules import RULE_CODES, block_index, contiguous_end_run, deferred_endings, keep_reveals
from app.diffusion.sampler_settings import Endings, Remasking, SamplerSettings
from app.diffusion.story_length import (
    ENDING_CODES,
    EndTokens,
    chosen_ending,
    end_probability,
    ended_tails,
    likeliest_end,
    may_end,
    without_endings,
)

Pinned = tuple[tuple[int, int], ...]
"""(position, token id) pairs fixed in a sequence besides its prefix; never masked, never changed."""

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, L), query (B, L) bool) -> float logits (N, V) at the query positions, row-major."""


@dataclass(frozen=True)
class SamplerRows:
    """Each row's sampler settings and seed as (B,) tensors on the batch's device."""

    steps: torch.Tensor  # (B,) long
    rule: torch.Tensor  # (B,) long: RULE_CODES[remasking]
    temperature: torch.Tensor  # (B,) float64
    top_k: torch.Tensor  # (B,) long; 0: no limit
    top_p: torch.Tensor  # (B,) float64; 1: no limit
    block_length: torch.Tensor  # (B,) long; 0: no blocks (confidence-ranked rows only)
    threshold: torch.Tensor  # (B,) float64: threshold rows' confidence_threshold
    entropy_budget: torch.Tensor  # (B,) float64: entropy_bound rows' budget
    guard_endings: torch.Tensor  # (B,) bool
    endings: torch.Tensor  # (B,) long: ENDING_CODES[endings]
    seed: torch.Tensor  # (B,) long
    fixed_until: torch.Tensor  # (B,) long: `fixed_until` of the row's canvas; its story ends no earlier

    @property
    def length_first(self) -> torch.Tensor:
        """(B,) bool: rows that draw their story's length at their first step."""
        return self.endings == ENDING_CODES[Endings.LENGTH_FIRST]

    @property
    def ranked(self) -> torch.Tensor:
        """(B,) bool: rows whose remasking ranks the predictions by confidence (all but random)."""
        return self.rule != RULE_CODES[Remasking.RANDOM]

    @classmethod
    def build(
        cls,
        settings: Sequence[SamplerSettings],
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        fixed: Sequence[int] | None = None,
    ) -> SamplerRows:
        """The rows for one sequence per entry of `settings` and `seeds`; `fixed`: each row's `fixed_until`
        (None: 0, a story that may end anywhere after its last word)."""
        columns = {
            "steps": ([s.steps for s in settings], torch.long),
            "rule": ([RULE_CODES[s.remasking] for s in settings], torch.long),
            "temperature": ([s.temperature for s in settings], torch.float64),
            "top_k": ([s.top_k or 0 for s in settings], torch.long),
            "top_p": ([1.0 if s.top_p is None else s.top_p for s in settings], torch.float64),
            "block_length": ([s.block_length or 0 for s in settings], torch.long),
            "threshold": ([s.confidence_threshold for s in settings], torch.float64),
            "entropy_budget": ([s.entropy_budget for s in settings], torch.float64),
            "guard_endings": ([s.guard_endings for s in settings], torch.bool),
            "endings": ([ENDING_CODES[s.endings] for s in settings], torch.long),
            "seed": (list(seeds), torch.long),
            "fixed_until": (list(fixed) if fixed is not None else [0] * len(settings), torch.long),
        }
        return cls(
            **{name: torch.tensor(values, dtype=dtype, device=device) for name, (values, dtype) in columns.items()}
        )

    def select(self, rows: torch.Tensor) -> SamplerRows:
        """The settings of `rows` (indices or a (B,) bool mask), in that order."""
        return SamplerRows(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    @classmethod
    def concat(cls, parts: Sequence[SamplerRows]) -> SamplerRows:
        """One batch of the rows of every part, in order."""
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class StepPlan:
    """Which positions a step needs logits for, decided before the model runs."""

    query: torch.Tensor  # (B, L) bool: positions that need logits
    reveal_counts: torch.Tensor  # (B,) long: confidence-ranked rows: the schedule's k; 0 elsewhere
    candidates: torch.Tensor  # (B, L) bool: the positions the row's rule may reveal (within `query`)

    def select(self, rows: torch.Tensor, width: int) -> StepPlan:
        """The plan of `rows` (indices or a (B,) bool mask), cut to `width` positions."""
        return StepPlan(self.query[rows][:, :width], self.reveal_counts[rows], self.candidates[rows][:, :width])


@dataclass(frozen=True)
class Step:
    """What one denoising step did: the new tokens and the positions it revealed."""

    x: torch.Tensor  # (B, L) tokens after the step
    rows: torch.Tensor  # (N,) row of each revealed position
    positions: torch.Tensor  # (N,)
    token_ids: torch.Tensor  # (N,)
    probs: torch.Tensor  # (N,) model probability of each revealed token
    model_called: bool


def step_times(index: int, num_steps: int) -> tuple[float, float]:
    """(t, s): the time at the start of step `index` (0-based) and the time after it."""
    return 1 - index / num_steps, 1 - (index + 1) / num_steps


def fixed_until(prefix: Sequence[int], pinned: Pinned = ()) -> int:
    """The position after a canvas's last fixed token, text or a pinned end (a fixed blank's): a story
    written around them ends no earlier, so blanks before fixed text or a fixed end hold words only."""
    return max([len(prefix), *(position + 1 for position, _ in pinned)])


def initial_tokens(
    prefix: Sequence[int], length: int, mask_id: int, device: torch.device | str = "cpu", pinned: Pinned = ()
) -> torch.Tensor:
    """(length,) ids: the fixed prefix (a prompt) followed by masks, with `pinned` tokens in place."""
    if len(prefix) > length:
        raise ValueError(f"the prompt takes {len(prefix)} tokens, more than the length {length}")
    x = torch.full((length,), mask_id, dtype=torch.long, device=device)
    x[: len(prefix)] = torch.tensor(list(prefix), dtype=torch.long, device=device)
    for position, token in pinned:
        x[position] = token
    return x


def plan_step(x: torch.Tensor, index: torch.Tensor, rows: SamplerRows, mask_id: int) -> StepPlan:
    """Decide, before the model runs, which positions each row's step `index` (B,) may reveal.

    Rows whose index reached their step count plan nothing.
    """
    masked = x == mask_id  # (B, L)
    active = index < rows.steps  # (B,)
    remaining = (rows.steps - index).clamp_min(1)  # (B,) steps left, this one included
    t = remaining.double() / rows.steps  # (B,)
    s = (remaining - 1).double() / rows.steps
    positions = torch.arange(x.shape[1], device=x.device)  # (L,)
    stay = uniform(rows.seed[:, None], index[:, None], positions, Purpose.REMASK) < (s / t)[:, None]  # (B, L)
    random_query = masked & ~stay
    n_masked = masked.sum(dim=1)  # (B,)
    counts = n_masked - torch.div(n_masked * (remaining - 1), remaining, rounding_mode="floor")  # (B,)
    confident_query = masked & (counts > 0)[:, None] & _up_to_block_of_kth_mask(masked, counts, rows.block_length)
    candidates = torch.where(rows.ranked[:, None], confident_query, random_query) & active[:, None]
    choosing_length = rows.length_first & (index == 0) & active  # (B,) the whole tail is read at the first step
    query = candidates | (masked & choosing_length[:, None])
    return StepPlan(query, torch.where(rows.ranked & active, counts, 0), candidates)


def _up_to_block_of_kth_mask(masked: torch.Tensor, counts: torch.Tensor, block_length: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions in the blocks up to the one holding each row's `counts`-th masked position,
    the only blocks a semi-autoregressive step can reveal from."""
    kth = masked & (masked.cumsum(dim=1) == counts[:, None])  # (B, L): at most one per row
    blocks = block_index(masked.shape[1], block_length)  # (B, L)
    last_block = (kth * blocks).sum(dim=1)  # (B,); 0 for rows that reveal nothing
    return blocks <= last_block[:, None]


def choose_tokens(
    logits: torch.Tensor,  # (N, V)
    temperature: torch.Tensor,  # (N,) float64
    top_k: torch.Tensor,  # (N,) long; 0: no limit
    top_p: torch.Tensor,  # (N,) float64; 1: no limit
    u: torch.Tensor,  # (N,) float64 uniforms in [0, 1)
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N,) and their probabilities under the model (N,): argmax where the temperature is 0,
    else a draw from the top-k / top-p filtered distribution at that temperature."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    ids = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)  # (N,)
    sampled = temperature > 0
    greedy = (~sampled).nonzero().squeeze(1)
    if greedy.numel():
        ids[greedy] = logits[greedy].argmax(dim=-1)
    filtered = sampled & ((top_k > 0) | (top_p < 1))
    for rows, draw in (
        ((sampled & ~filtered).nonzero().squeeze(1), _draw),
        (filtered.nonzero().squeeze(1), _draw_filtered),
    ):
        if rows.numel():
            ids[rows] = draw(logits[rows], temperature[rows], top_k[rows], top_p[rows], u[rows])
    log_probs = logits.gather(-1, ids[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)  # (N,) under the model
    return ids, log_probs.exp()


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Column (M,) where each row's cumulative weight first exceeds `u` times its total; the sum is
    taken in float64 so that tokens far in the tail keep their exact share."""
    cdf = weights.cumsum(dim=-1, dtype=torch.float64)  # (M, V)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)  # (M, 1)
    return pick.clamp_max(weights.shape[-1] - 1).squeeze(-1)


def _tempered(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Unnormalised probabilities at each row's temperature, scaled so that the largest is 1: a
    vanishing temperature gives 1 for the top token and 0 elsewhere, never an overflow."""
    top = logits.max(dim=-1, keepdim=True).values  # (M, 1)
    scale = temperature.clamp_min(torch.finfo(torch.float32).tiny).float()  # 5e-324 would be 0 in float32
    return ((logits - top) / scale[:, None]).exp()


def _draw(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Inverse-CDF draws (M,) from the whole distribution at each row's temperature: no sort needed."""
    return _inverse_cdf(_tempered(logits, temperature), u)


def _draw_filtered(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Inverse-CDF draws (M,) from logits (M, V) in descending order, so that top-k and the nucleus are
    prefixes; the nucleus is taken at temperature 1 and always keeps the top token."""
    ordered, order = logits.sort(dim=-1, descending=True)  # (M, V)
    rank = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (M, V)
    keep = (rank < torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]) & (mass_before < top_p[:, None])
    keep[:, 0] = True  # a vanishing top_p (1e-46 underflows to 0 in float32) still leaves one token
    weights = torch.where(keep, _tempered(ordered, temperature), 0.0)  # (M, V)
    return order.gather(-1, _inverse_cdf(weights, u)[:, None]).squeeze(-1)


def apply_step(
    x: torch.Tensor,  # (B, L)
    index: torch.Tensor,  # (B,) long: the step each row is taking, 0-based
    plan: StepPlan,
    logits: torch.Tensor | None,  # (N, V) at plan.query, row-major; None: the model did not run
    rows: SamplerRows,
    mask_id: int,
    ends: EndTokens | None = None,  # tokens that end a story; None: no end rule (a model without PAD)
) -> Step:
    """Write the chosen tokens into a copy of `x`; with `ends`, each row stays one contiguous story."""
    row, position = plan.query.nonzero(as_tuple=True)  # (N,), (N,)
    if logits is None or row.numel() == 0:
        empty = row[:0]
        return Step(x, empty, empty, empty, empty.float(), False)
    ending = torch.zeros_like(plan.query)  # (B, L): the end tokens length-first rows write at their first step
    raw_logits = logits
    ends_here = None  # (N,) the model's end probability, for rows whose endings are not simply sampled
    open_end = torch.ones_like(row, dtype=torch.bool)  # (N,) positions after the row's last word
    if ends is not None:
        open_end = may_end(x, mask_id, ends.ids, rows.fixed_until)[row, position]
        own_endings = rows.endings[row] != ENDING_CODES[Endings.SAMPLED]  # (N,)
        if bool(own_endings.any()):  # one host sync; sampled rows need none of this
            ends_here = end_probability(logits, ends.ids, mask_id)
            ending = chosen_ending(
                x, plan.query, ends_here, rows.length_first & (index == 0), rows.seed, rows.fixed_until, mask_id, ends
            )
        words_only = ~open_end | (own_endings & ~ending[row, position])  # (N,)
        logits = without_endings(logits, words_only, ends.ids)
    u = uniform(rows.seed[row], index[row], position, Purpose.TOKEN)  # (N,)
    ids, probs = choose_tokens(logits, rows.temperature[row], rows.top_k[row], rows.top_p[row], u, mask_id)
    if ends is not None and ends_here is not None:
        calibrated = rows.endings[row] == ENDING_CODES[Endings.CALIBRATED]
        drawn = calibrated & open_end & (uniform(rows.seed[row], index[row], position, Purpose.END) < ends_here)
        ended = ending[row, position] | drawn  # (N,)
        ids = torch.where(ended, likeliest_end(raw_logits, ends.ids), ids)
        probs = torch.where(ended, ends_here.float(), probs)
    by_entropy = rows.rule[row] == RULE_CODES[Remasking.ENTROPY_BOUND]  # (N,)
    entropy = _entropy(logits, mask_id) if bool(by_entropy.any()) else None
    end_candidate = end_run = None
    if ends is not None:
        end_candidate = torch.zeros_like(plan.query)  # (B, L)
        end_candidate[plan.query] = torch.isin(ids, ends.ids)
        end_run = contiguous_end_run(x, end_candidate, ends.ids)  # (B, L)
    ruled = plan.candidates & ~ending  # (B, L): what the rules decide on; a chosen ending is kept as it is
    candidate = ruled[row, position]  # (N,)
    if ends_here is None:  # no length-first row: every queried position is a candidate (no boolean indexing)
        kept = keep_reveals(
            plan.query, plan.reveal_counts, rows.rule, rows.guard_endings, rows.block_length, rows.threshold,
            rows.entropy_budget, probs, entropy, end_run, end_candidate,
        )  # fmt: skip
    else:
        kept = torch.zeros_like(candidate)
        kept[candidate] = keep_reveals(
            ruled, plan.reveal_counts, rows.rule, rows.guard_endings, rows.block_length, rows.threshold,
            rows.entropy_budget, probs[candidate], None if entropy is None else entropy[candidate], end_run,
            end_candidate,
        )  # fmt: skip
    unranked = ~rows.ranked[row] & candidate  # (N,) random rows keep every candidate but the endings they defer
    if end_run is not None and end_candidate is not None:
        last_step = index + 1 >= rows.steps  # (B,)
        unranked &= ~deferred_endings(plan.query, rows.guard_endings, last_step, end_run, end_candidate)
    keep = torch.where(rows.ranked[row], kept, unranked) | ending[row, position]  # (N,)
    after = x.clone()
    after[row[keep], position[keep]] = ids[keep]
    reveal_probs = torch.ones(x.shape, device=x.device)  # (B, L): 1 where an end before decided the token
    reveal_probs[row[keep], position[keep]] = probs[keep].float()
    if ends is not None:
        after = ended_tails(x, after, mask_id, ends)
    return _revealed(x, after, reveal_probs, mask_id)


def _revealed(before: torch.Tensor, after: torch.Tensor, probs: torch.Tensor, mask_id: int) -> Step:
    """The step from `before` to `after` (B, L), with `probs` (B, L) of the revealed tokens."""
    row, position = ((before == mask_id) & (after != mask_id)).nonzero(as_tuple=True)  # (N,), (N,)
    return Step(after, row, position, after[row, position], probs[row, position], True)


def _entropy(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(N,) entropy in nats of the model's distribution at each candidate (the mask token excluded)."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    log_probs = logits.log_softmax(dim=-1)
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)


def denoise(
    logits_fn: LogitsFn, x: torch.Tensor, rows: SamplerRows, mask_id: int, ends: EndTokens | None = None
) -> Iterator[tuple[torch.Tensor, Step]]:
    """Run every row's steps from `x` (B, L), yielding (steps done per row (B,), step) after each
    step; when the longest schedule ends no mask is left."""
    index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # (B,)
    for _ in range(int(rows.steps.max())):
        plan = plan_step(x, index, rows, mask_id)
        logits = logits_fn(x, plan.query) if plan.query.any() else None
        step = apply_step(x, index, plan, logits, rows, mask_id, ends)
        x, index = step.x, torch.minimum(index + 1, rows.steps)
        yield index, step
