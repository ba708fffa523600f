"""Which of a step's predictions the confidence-ranked rules keep: low_confidence, threshold, entropy_bound.

Every rule ranks a row's candidates by the model's probability of the predicted token (earlier
blocks first) and keeps a prefix of that ranking, at least the schedule's k so that `steps` bounds
the number of forwards and no mask is left at the end:
- `low_confidence` keeps exactly k (LLaDA);
- `threshold` also keeps every candidate at least `confidence_threshold` likely (Fast-dLLM);
- `entropy_bound` keeps the longest prefix whose summed entropy stays within `entropy_budget`
  (EB-sampler, arXiv 2505.24857).

The end of a story. A trained model is most sure of the padding after a story, so a rule that
reveals whatever is confident fills the tail first and ends every story early; and a random reveal
of PAD far from the text, made on a guess at high t, ends the story there. With `guard_endings` an
end token (PAD, SEP, EOS) may only be revealed as part of a contiguous run of end tokens reaching
the end of the sequence, and a run is revealed from its right end: the story's end moves left only
as far as the model is sure of every position after it. Ranked rules rank an unguarded end token
last; random remasking keeps it masked for a later step (`deferred_endings`), except at the last.
"""

from __future__ import annotations

import math

import torch

from app.diffusion.sampler_rows import RULE_CODES, SamplerRows
from app.diffusion.sampler_settings import Remasking


def block_index(length: int, block_length: torch.Tensor) -> torch.Tensor:
    """(B, L) the block of each position; one block for rows without blocks (block_length 0)."""
    width = torch.where(block_length > 0, block_length, length)  # (B,)
    return torch.arange(length, device=block_length.device)[None, :] // width[:, None]


def contiguous_end_run(x: torch.Tensor, end_candidate: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions from which every position to the end is an end token, revealed already
    (or right padding) or predicted by this step (`end_candidate`, (B, L))."""
    is_end = torch.isin(x, end_ids) | end_candidate  # (B, L)
    return is_end.flip(1).cumprod(dim=1).flip(1).bool()


def keep_reveals(
    rows: SamplerRows,
    candidates: torch.Tensor,  # (B, L) bool: the positions the rules decide on
    counts: torch.Tensor,  # (B,) long: the schedule's k
    confidence: torch.Tensor,  # (B, L) float32: the model's probability of each candidate's predicted token
    entropy: torch.Tensor | None,  # (B, L) entropy of each candidate's distribution; None: no entropy_bound row
    end_run: torch.Tensor | None,  # (B, L) from `contiguous_end_run`; None: no end rule
    end_candidate: torch.Tensor | None,  # (B, L) bool: candidates whose predicted token ends a story
) -> torch.Tensor:
    """(B, L) bool: the candidates that each confidence-ranked row's rule keeps."""
    confidence = confidence.masked_fill(~candidates, -math.inf)  # (B, L)
    ineligible = torch.zeros_like(candidates)
    if end_run is not None and end_candidate is not None:
        guarded = rows.guard_endings[:, None]  # (B, 1)
        in_run = end_candidate & end_run
        # inside a run, the right end first: a kept part of the run is always a suffix of it
        positions = torch.arange(candidates.shape[1], device=candidates.device) * 1e-7
        run_confidence = confidence.masked_fill(~in_run, math.inf).flip(1).cummin(dim=1).values.flip(1)
        confidence = torch.where(in_run & guarded, run_confidence + positions, confidence)
        ineligible = end_candidate & ~end_run & guarded
    # probabilities lie in [0, 1]: 2 per block puts earlier blocks first, 4 puts ineligible ends last
    key = confidence - 2.0 * block_index(candidates.shape[1], rows.block_length) - 4.0 * ineligible
    order = key.argsort(dim=1, descending=True, stable=True)  # (B, L)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)  # (B, L) rank of each position in its row
    eligible = candidates & ~ineligible
    above = (eligible & (confidence >= rows.threshold[:, None].float())).sum(dim=1)  # (B,)
    n = torch.where(rows.rule == RULE_CODES[Remasking.THRESHOLD], torch.maximum(counts, above), counts)
    if entropy is not None:
        spent = torch.where(candidates, entropy.double(), 0.0)  # (B, L)
        within = (spent.gather(1, order).cumsum(dim=1) <= rows.entropy_budget[:, None]) & eligible.gather(1, order)
        affordable = within.cumprod(dim=1).sum(dim=1)  # (B,) the longest prefix within budget
        n = torch.where(rows.rule == RULE_CODES[Remasking.ENTROPY_BOUND], torch.maximum(counts, affordable), n)
    return (rank < n[:, None]) & candidates


def deferred_endings(
    rows: SamplerRows,
    last_step: torch.Tensor,  # (B,) bool: the row's final step, when everything must be revealed
    end_run: torch.Tensor,  # (B, L)
    end_candidate: torch.Tensor,  # (B, L)
) -> torch.Tensor:
    """(B, L) bool: end tokens a guarding random row keeps masked for now."""
    return end_candidate & ~end_run & (rows.guard_endings & ~last_step)[:, None]
