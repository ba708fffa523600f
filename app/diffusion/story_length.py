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
  blocks; rainbow padding retrains with several distinct pad tokens; this needs neither. A canvas
  that ends with fixed text or a fixed blank's pinned end has no tail to choose (its `fixed_until`
  is its length): only the ban applies, so that blanks between texts are filled with words. A
  batch's right padding is not such an end: a row chooses the same length alone and in any batch.

Under every rule a story is one contiguous text (`may_end`, `ended_tails`): an end token is possible
only after the row's last word (prompt, pinned text and revealed words alike) and its canvas's fixed
end (`SamplerRows.fixed_until`), and once one is
revealed every masked position after it is the story's PAD at once, words drawn there in the same
step included. Training data holds no word after an end, so this is the model's own support, not a
heuristic; without it a PAD drawn early in the tail and the words revealed later around it joined
fragments into one "story".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from app.diffusion.queried import Queried
from app.diffusion.randomness import Purpose, uniform
from app.diffusion.sampler_rows import END_RULE_CODES, SamplerRows
from app.diffusion.sampler_settings import Endings


@dataclass(frozen=True)
class EndTokens:
    """The tokens that end a story (PAD, SEP, EOS) and the one that fills a story's tail after its end."""

    ids: torch.Tensor  # (E,) long, sorted
    pad: int

    @classmethod
    def build(cls, ids: Iterable[int], pad: int, device: torch.device | str = "cpu") -> EndTokens:
        """`ids` with `pad` among them, on `device`."""
        return cls(torch.tensor(sorted({*ids, pad}), dtype=torch.long, device=device), pad)


@dataclass(frozen=True)
class StepEnds:
    """A step's endings at its N queried positions, all decided before any word is chosen."""

    word_logits: torch.Tensor  # (N, V): end tokens impossible where the row's rule does not sample them
    chosen: torch.Tensor  # (B, L) bool: length-first rows' tails from their drawn end, written as they are
    ended: torch.Tensor | None  # (N,) bool: positions that end the story (chosen or drawn); None: only sampled ends
    end_token: torch.Tensor | None  # (N,) the likeliest end token where `ended`
    end_prob: torch.Tensor | None  # (N,) float32: the model's end probability there

    def written(self, ids: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen `ids` (N,) and their `probs` (N,), with the decided ends in place."""
        if self.ended is None or self.end_token is None or self.end_prob is None:
            return ids, probs
        return torch.where(self.ended, self.end_token, ids), torch.where(self.ended, self.end_prob, probs)


def step_ends(
    x: torch.Tensor,  # (B, L)
    index: torch.Tensor,  # (B,) the step each row is taking
    at: Queried,
    logits: torch.Tensor,  # (N, V) at `at`
    rows: SamplerRows,
    mask_id: int,
    ends: EndTokens | None,
) -> StepEnds:
    """Where each queried position may end its story, and where `calibrated` and `length_first` end it.

    An end token is possible only after the row's last word (`may_end`); `sampled` rows draw it there
    like any token, the other rules decide it themselves and choose among words only.
    """
    if ends is None:
        return StepEnds(logits, torch.zeros(at.shape, dtype=torch.bool, device=x.device), None, None, None)
    open_end = at.gather(may_end(x, mask_id, ends.ids, rows.fixed_until))  # (N,)
    if rows.kinds.endings <= {Endings.SAMPLED}:
        chosen = torch.zeros(at.shape, dtype=torch.bool, device=x.device)
        return StepEnds(without_endings(logits, ~open_end, ends.ids), chosen, None, None, None)
    ends_here = end_probability(logits, ends.ids, mask_id)  # (N,) float64
    chosen = torch.zeros(at.shape, dtype=torch.bool, device=x.device)
    if Endings.LENGTH_FIRST in rows.kinds.endings:
        chosen = chosen_ending(x, at, ends_here, rows.length_first & (index == 0), rows, mask_id, ends)
    row_endings = rows.endings[at.row]  # (N,)
    own = row_endings != END_RULE_CODES[Endings.SAMPLED]
    chosen_here = at.gather(chosen)
    calibrated = (row_endings == END_RULE_CODES[Endings.CALIBRATED]) & open_end
    drawn = calibrated & (uniform(rows.seed[at.row], index[at.row], at.position, Purpose.END) < ends_here)
    word_logits = without_endings(logits, ~open_end | (own & ~chosen_here), ends.ids)
    ended = chosen_here | drawn  # (N,)
    return StepEnds(word_logits, chosen, ended, likeliest_end(logits, ends.ids), ends_here.float())


def may_end(x: torch.Tensor, mask_id: int, end_ids: torch.Tensor, fixed_until: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions after each row's last word and its fixed text (`fixed_until` (B,)), the only
    ones where its story may end."""
    word = (x != mask_id) & ~torch.isin(x, end_ids)  # (B, L) prompt, pinned text and revealed words
    positions = torch.arange(x.shape[1], device=x.device)
    return (word.flip(1).cumsum(dim=1).flip(1) == 0) & (positions[None, :] >= fixed_until[:, None])


def ended_tails(before: torch.Tensor, after: torch.Tensor, mask_id: int, ends: EndTokens) -> torch.Tensor:
    """`after` (B, L) with every position that was masked `before` and follows an end token set to PAD."""
    is_end = torch.isin(after, ends.ids).long()  # (B, L)
    past_end = (is_end.cumsum(dim=1) - is_end) > 0  # (B, L) an end token stands before the position
    return torch.where(past_end & (before == mask_id), ends.pad, after)


def end_probability(logits: torch.Tensor, end_ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(N,) float64: the model's probability (temperature 1, mask token excluded) that a position holds an end token."""
    logits = logits.float().clone()
    logits[:, mask_id] = -math.inf
    return logits.softmax(dim=-1)[:, end_ids].sum(dim=-1).double()


def chosen_ending(
    x: torch.Tensor,  # (B, L)
    at: Queried,  # the positions `ends_here` is for
    ends_here: torch.Tensor,  # (N,) float64: `end_probability` at those positions
    choosing: torch.Tensor,  # (B,) bool: rows that choose their length this step (their first)
    rows: SamplerRows,
    mask_id: int,
    ends: EndTokens,
) -> torch.Tensor:
    """(B, L) bool: for each choosing row, its masked tail from the drawn end onwards (a suffix of the row).

    The tail is the masked positions where the story may end (`may_end`: after the prompt and any fixed
    text; a batch's right padding does not shorten it). The row's length distribution is the running
    maximum of the end probability along it (every tail position must be queried); the end is the
    first position where it exceeds the row's uniform draw (seed, step 0), so a row ends nowhere when
    the model never expects an end that early.
    """
    tail = may_end(x, mask_id, ends.ids, rows.fixed_until) & (x == mask_id) & choosing[:, None]  # (B, L)
    cdf = (at.spread(ends_here, 0.0) * tail).cummax(dim=1).values  # (B, L), 0 before the tail
    zero = torch.zeros_like(rows.seed)
    u = uniform(rows.seed, zero, zero, Purpose.LENGTH)  # (B,)
    return tail & (cdf > u[:, None])


def likeliest_end(logits: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """(N,) the likeliest end token at each position (SEP where training wrote one, else PAD)."""
    return end_ids[logits[:, end_ids].argmax(dim=-1)]


def without_endings(logits: torch.Tensor, banned: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """`logits` (N, V) with the end tokens impossible at the `banned` (N,) positions."""
    columns = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    columns[end_ids] = True
    return logits.masked_fill(banned[:, None] & columns[None, :], -math.inf)
