"""Where a story ends: the `endings` rules other than `sampled` (end tokens drawn like any token).

A model trained on padded stories predicts, at each masked position, the probability that the story
has ended there. Sampling that end token at the row's temperature and top-p lets them decide the
length: they sharpen PAD wherever it is the single likeliest token, so random remasking reveals PAD
too early and stories end short (docs/story-quality.md). And confidence-ranked rules (LLaDA's
low_confidence, threshold, entropy_bound) reveal the tail first, because PAD next to PAD is their
surest prediction, and write near-empty stories without blocks (docs/fast-decoding.md).

- `calibrated`: whether a revealed position ends the story is drawn at the model's own end
  probability (temperature 1, one uniform of its own); temperature and top-p choose only among the
  words. The length follows the model, the words keep their sampling.
- `length_first`: at a fully masked position p the end probability is the share of training stories
  shorter than p. Read along the masked tail at the row's first step (all of it queried), its running
  maximum is the model's length CDF; one uniform draw fixes the end, end tokens are written at once
  from there to the end of the sequence, and no end token is written anywhere else. The rules then
  rank only the story's words. LLaDA's answer to the same failure is to fix the length by hand or use
  blocks; rainbow padding retrains with several distinct pad tokens; this needs neither. A row whose
  sequence does not end with masks (an ending or a fixed blank pinned last) has no tail to choose:
  only the ban applies, so that blanks between texts are filled with words.
"""

from __future__ import annotations

import math

import torch

from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_settings import Endings

ENDING_CODES = {endings: code for code, endings in enumerate(Endings)}
"""Each `endings` value as the integer its rows carry on the device."""


def masked_tail(x: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B, L) bool: the run of masked positions that reaches the end of each row (empty if the last is fixed)."""
    return (x == mask_id).flip(1).cumprod(dim=1).flip(1).bool()


def end_probability(logits: torch.Tensor, end_ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(N,) float64: the model's probability (temperature 1, mask token excluded) that a position holds an end token."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    return logits.softmax(dim=-1)[:, end_ids].sum(dim=-1).double()


def chosen_ending(
    x: torch.Tensor,  # (B, L)
    query: torch.Tensor,  # (B, L) bool: the positions `ends_here` is for, row-major
    ends_here: torch.Tensor,  # (N,) float64: `end_probability` at those positions
    choosing: torch.Tensor,  # (B,) bool: rows that choose their length this step (their first)
    seed: torch.Tensor,  # (B,) long
    mask_id: int,
) -> torch.Tensor:
    """(B, L) bool: for each choosing row, its masked tail from the drawn end onwards (a suffix of the row).

    The row's length distribution is the running maximum of the end probability along its masked tail
    (every tail position must be in `query`); the end is the first position where it exceeds the row's
    uniform draw (seed, step 0), so a row ends nowhere when the model never expects an end that early.
    """
    tail = masked_tail(x, mask_id) & choosing[:, None]
    ends = torch.zeros(query.shape, dtype=torch.float64, device=x.device)  # (B, L)
    ends[query] = ends_here
    cdf = (ends * tail).cummax(dim=1).values  # (B, L), 0 before the tail
    u = uniform(seed, torch.zeros_like(seed), torch.zeros_like(seed), Purpose.LENGTH)  # (B,)
    return tail & (cdf > u[:, None])


def likeliest_end(logits: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """(N,) the likeliest end token at each position (SEP where training wrote one, else PAD)."""
    return end_ids[logits[:, end_ids].argmax(dim=-1)]


def without_endings(logits: torch.Tensor, banned: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """`logits` (N, V) with the end tokens impossible at the `banned` (N,) positions."""
    columns = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    columns[end_ids] = True
    return logits.masked_fill(banned[:, None] & columns[None, :], -math.inf)
