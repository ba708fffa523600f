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

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from app.diffusion.queried import Queried
from app.diffusion.randomness import Purpose, uniform
from app.diffusion.reveal_rules import block_index, contiguous_end_run, deferred_endings, keep_reveals
from app.diffusion.revision import remasked, revisable, revision_rate, stay_masked
from app.diffusion.sampler_rows import RowKinds
from app.diffusion.sampler_rows import SamplerRows as SamplerRows  # where callers found it before
from app.diffusion.sampler_settings import Remasking
from app.diffusion.story_length import EndTokens, StepEnds, ended_tails, step_ends

Pinned = tuple[tuple[int, int], ...]
"""(position, token id) pairs fixed in a sequence besides its prefix; never masked, never changed."""

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, L), query (B, L) bool) -> float logits (N, V) at the query positions, row-major."""


@dataclass(frozen=True)
class StepPlan:
    """Which positions a step needs logits for, decided before the model runs."""

    query: torch.Tensor  # (B, L) bool: positions that need logits
    reveal_counts: torch.Tensor  # (B,) long: confidence-ranked rows: the schedule's k; 0 elsewhere
    candidates: torch.Tensor  # (B, L) bool: the positions the row's rule may reveal (within `query`)
    remask: torch.Tensor  # (B, L) bool: written words the step returns to the mask (revision sampling)

    def select(self, rows: torch.Tensor, width: int) -> StepPlan:
        """The plan of `rows` (indices or a (B,) bool mask), cut to `width` positions."""
        cut = [self.query, self.candidates, self.remask]
        query, candidates, remask = (plan[rows][:, :width] for plan in cut)
        return StepPlan(query, self.reveal_counts[rows], candidates, remask)


@dataclass(frozen=True)
class Step:
    """What one denoising step did, in fixed shapes: the new tokens and the positions it revealed."""

    x: torch.Tensor  # (B, L) tokens after the step
    revealed: torch.Tensor  # (B, L) bool: positions this step unmasked
    reveal_probs: torch.Tensor  # (B, L) float32: the model's probability of each revealed token
    model_called: bool
    remasked: torch.Tensor  # (B, L) bool: written words this step returned to the mask (revision sampling)

    @property
    def rows(self) -> torch.Tensor:
        """(N,) the row of each revealed position, row-major (sizes from values: a host sync on a GPU)."""
        return self.revealed.nonzero(as_tuple=True)[0]

    @property
    def positions(self) -> torch.Tensor:
        """(N,) each revealed position, row-major."""
        return self.revealed.nonzero(as_tuple=True)[1]

    @property
    def token_ids(self) -> torch.Tensor:
        """(N,) the token revealed at each of `positions`."""
        return self.x[self.revealed]

    @property
    def probs(self) -> torch.Tensor:
        """(N,) the model's probability of each revealed token."""
        return self.reveal_probs[self.revealed]


def diffusion_time(steps_done: int, num_steps: int) -> float:
    """t after `steps_done` of `num_steps` linear steps: 1 before the first, 0 after the last (a step
    from t to s is step `steps_done` with s = diffusion_time(steps_done + 1, num_steps))."""
    return 1 - steps_done / num_steps


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


def plan_step(
    x: torch.Tensor,  # (B, L)
    index: torch.Tensor,  # (B,) long
    rows: SamplerRows,
    mask_id: int,
    writable: torch.Tensor | None = None,  # (B, L) bool: positions masked at the start; None: no revision
    ends: EndTokens | None = None,  # end tokens, which revision never remasks
) -> StepPlan:
    """Decide, before the model runs, which positions each row's step `index` (B,) may reveal, and
    which written words it returns to the mask (`revision`).

    Rows whose index reached their step count plan nothing.
    """
    masked = x == mask_id  # (B, L)
    active = index < rows.steps  # (B,)
    remaining = (rows.steps - index).clamp_min(1)  # (B,) steps left, this one included
    t = remaining.double() / rows.steps  # (B,)
    s = (remaining - 1).double() / rows.steps
    positions = torch.arange(x.shape[1], device=x.device)  # (L,)
    sigma = revision_rate(rows, t, s)  # (B,) 0 for rows that do not revise
    stay = uniform(rows.seed[:, None], index[:, None], positions, Purpose.REMASK) < stay_masked(t, s, sigma)[:, None]
    random_query = masked & ~stay
    n_masked = masked.sum(dim=1)  # (B,)
    counts = n_masked - torch.div(n_masked * (remaining - 1), remaining, rounding_mode="floor")  # (B,)
    confident_query = masked & (counts > 0)[:, None] & _up_to_block_of_kth_mask(masked, counts, rows.block_length)
    candidates = torch.where(rows.ranked[:, None], confident_query, random_query) & active[:, None]
    choosing_length = rows.length_first & (index == 0) & active  # (B,) the whole tail is read at the first step
    query = candidates | (masked & choosing_length[:, None])
    remask = torch.zeros_like(masked)
    if rows.kinds.revises and writable is not None:
        words = revisable(x, writable, mask_id, None if ends is None else ends.ids) & active[:, None]
        remask = remasked(rows, index, words, sigma)
    return StepPlan(query, torch.where(rows.ranked & active, counts, 0), candidates, remask)


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
    kinds: RowKinds = RowKinds(),  # which choices some row makes (host facts: no device query); default: all
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N,) and their probabilities under the model (N,): argmax where the temperature is 0,
    else a draw from the top-k / top-p filtered distribution at that temperature. Each kind of choice
    runs over every position and is selected per row, so the shapes never depend on the rows' values."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    sampled = temperature > 0  # (N,)
    filtered = sampled & ((top_k > 0) | (top_p < 1))
    ids = logits.argmax(dim=-1) if kinds.greedy else torch.zeros_like(u, dtype=torch.long)  # (N,)
    for present, chosen, draw in (
        (kinds.plain, sampled & ~filtered, _draw),
        (kinds.filtered, filtered, _draw_filtered),
    ):
        if present:
            ids = torch.where(chosen, draw(logits, temperature, top_k, top_p, u), ids)
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
    queried: int | None = None,  # N, plan.query's count, when the caller knows it; None: counted here (a sync)
) -> Step:
    """Write the chosen tokens into a copy of `x`; with `ends`, each row stays one contiguous story.

    Plan (the queried positions) -> noise (the row's own uniforms) -> confidence (the chosen tokens'
    probabilities) -> transfer (what each row's rule keeps), in fixed shapes: no host sync.
    """
    count = int(plan.query.sum()) if queried is None else queried
    if logits is None or count == 0:
        after = torch.where(plan.remask, mask_id, x) if rows.kinds.revises else x
        return Step(after, torch.zeros_like(plan.query), torch.ones(x.shape, device=x.device), False, plan.remask)
    at = Queried.of(plan.query, count)
    endings = step_ends(x, index, at, logits, rows, mask_id, ends)
    u = uniform(rows.seed[at.row], index[at.row], at.position, Purpose.TOKEN)  # (N,)
    r = at.row
    ids, probs = choose_tokens(
        endings.word_logits, rows.temperature[r], rows.top_k[r], rows.top_p[r], u, mask_id, rows.kinds
    )
    ids, probs = endings.written(ids, probs)
    entropy = None
    if Remasking.ENTROPY_BOUND in rows.kinds.rules:
        entropy = at.spread(_entropy(endings.word_logits, mask_id), 0.0)  # (B, L)
    keep = _transfer(x, index, plan, at, ids, at.spread(probs, 0.0), entropy, rows, endings, ends)  # (B, L)
    after = torch.where(keep, at.spread(ids, x), x)
    reveal_probs = torch.where(keep, at.spread(probs, 1.0), 1.0)  # (B, L): 1 where an end before decided it
    if ends is not None:
        after = ended_tails(x, after, mask_id, ends)
    if rows.kinds.revises:  # remasked words precede every end (`may_end`): the story stays contiguous
        after = torch.where(plan.remask, mask_id, after)
    return Step(after, (x == mask_id) & (after != mask_id), reveal_probs, True, plan.remask)


def _transfer(
    x: torch.Tensor,  # (B, L)
    index: torch.Tensor,  # (B,)
    plan: StepPlan,
    at: Queried,
    ids: torch.Tensor,  # (N,) the chosen tokens
    confidence: torch.Tensor,  # (B, L) their probabilities
    entropy: torch.Tensor | None,  # (B, L)
    rows: SamplerRows,
    endings: StepEnds,
    ends: EndTokens | None,
) -> torch.Tensor:
    """(B, L) bool: the queried positions that get their chosen token: what the row's rule keeps, and
    the ends a length-first row chose (kept as they are)."""
    ruled = plan.candidates & ~endings.chosen  # (B, L): what the rules decide on
    end_candidate = end_run = None
    if ends is not None:
        end_candidate = at.spread(torch.isin(ids, ends.ids), False)  # (B, L)
        end_run = contiguous_end_run(x, end_candidate, ends.ids)  # (B, L)
    kept = keep_reveals(rows, ruled, plan.reveal_counts, confidence, entropy, end_run, end_candidate)
    unranked = ruled  # random rows keep every candidate but the endings they defer
    if end_run is not None and end_candidate is not None:
        unranked = ruled & ~deferred_endings(rows, index + 1 >= rows.steps, end_run, end_candidate)
    return torch.where(rows.ranked[:, None], kept, unranked) | endings.chosen


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
    step; when the longest schedule ends no mask is left. (The engine runs the same steps without
    host syncs; this loop counts each step's queries on the host.)"""
    index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # (B,)
    writable = x == mask_id  # (B, L) what the sampler writes, and so may revise
    for _ in range(int(rows.steps.max())):
        plan = plan_step(x, index, rows, mask_id, writable, ends)
        count = int(plan.query.sum())
        logits = logits_fn(x, plan.query) if count else None
        step = apply_step(x, index, plan, logits, rows, mask_id, ends, count)
        x, index = step.x, torch.minimum(index + 1, rows.steps)
        yield index, step
