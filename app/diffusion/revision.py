"""Revision sampling: a step may return words it wrote earlier to the mask (ReMDM, Wang et al. 2025).

A masked diffusion sampler otherwise never changes a token once written, so an early guess made on
little context stays in the story. ReMDM's remasking posterior lets a step from t to s send each
unmasked token back to the mask with probability σ_t, and reveal more of the masked ones so that the
marginal masked fraction is still s (linear schedule, α_t = 1 - t unmasked):

    P(a masked position stays masked) = (s - σ_t (1 - t)) / t,   σ_t = min(η, s / (1 - t))

The cap (ReMDM-cap) keeps that probability in [0, 1], and makes σ 0 at the last step (s = 0), so the
sequence still ends with no mask. η is the row's `revision` setting (0: off). Confidence-ranked rows
reveal the schedule's share of whatever is masked, remasked positions included, so they end unmasked
too. Only words the sampler wrote are remasked: never the prompt, typed or pinned text, a canvas's
fixed spans, nor end tokens (a revealed end token ends the story: `story_length`); a remasked word is
masked again before the end, so a story stays one contiguous text. Each draw is counter-based,
keyed by (seed, step, position): a row revises the same way alone or in any batch.
"""

from __future__ import annotations

import torch

from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_rows import SamplerRows


def revision_rate(rows: SamplerRows, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B,) float64 σ_t: each row's chance that a written word returns to the mask in the step t -> s."""
    cap = s / (1 - t).clamp_min(torch.finfo(torch.float64).tiny)  # 1 - t = 0 at the first step: no word yet
    return torch.minimum(rows.revision, cap)


def stay_masked(t: torch.Tensor, s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B,) float64: the chance that a masked position stays masked, lowered by what σ remasks."""
    return ((s - sigma * (1 - t)) / t).clamp_min(0.0)


def revisable(x: torch.Tensor, writable: torch.Tensor, mask_id: int, end_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, L) bool: the words the sampler wrote (`writable`: positions masked at the start), end tokens excluded."""
    words = writable & (x != mask_id)
    return words if end_ids is None else words & ~torch.isin(x, end_ids)


def remasked(
    rows: SamplerRows,
    index: torch.Tensor,  # (B,) the step each row takes
    candidates: torch.Tensor,  # (B, L) bool: `revisable` positions of active rows
    sigma: torch.Tensor,  # (B,) from `revision_rate`
) -> torch.Tensor:
    """(B, L) bool: the written words this step returns to the mask."""
    positions = torch.arange(candidates.shape[1], device=candidates.device)  # (L,)
    u = uniform(rows.seed[:, None], index[:, None], positions, Purpose.REVISE)  # (B, L)
    return candidates & (u < sigma[:, None])
