"""Each row's sampler settings as (B,) tensors on the device, and what the batch uses as a host-side summary.

The tensors let rows with different settings share every kernel of a step. The summary (`RowKinds`)
lets the step choose its branches (is any row greedy? any entropy_bound row? any calibrated row?) from
facts the host already has, instead of asking the device with `bool(t.any())`, a sync on a GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.diffusion.devices import to_device
from app.diffusion.sampler_settings import Endings, Remasking, SamplerSettings

RULE_CODES = {remasking: code for code, remasking in enumerate(Remasking)}
"""Each remasking as the integer its rows carry on the device."""

END_RULE_CODES = {endings: code for code, endings in enumerate(Endings)}
"""Each `endings` value as the integer its rows carry on the device."""


@dataclass(frozen=True)
class RowKinds:
    """Which rules, endings and token choices some row of a batch uses. After rows leave it may name
    kinds no row uses any more: a branch run for nobody costs time, never changes a row's result."""

    rules: frozenset[Remasking] = frozenset(Remasking)
    endings: frozenset[Endings] = frozenset(Endings)
    greedy: bool = True  # temperature 0: argmax
    plain: bool = True  # sampled without top-k or top-p
    filtered: bool = True  # sampled with top-k or top-p
    revises: bool = True  # revision sampling: some row may remask written words

    @classmethod
    def of(cls, settings: Sequence[SamplerSettings]) -> RowKinds:
        """What `settings` use."""
        sampled = [s for s in settings if s.temperature > 0]
        filtered = [(s.top_k or 0) > 0 or (s.top_p is not None and s.top_p < 1) for s in sampled]  # as on the device
        return cls(
            frozenset(s.remasking for s in settings),
            frozenset(s.endings for s in settings),
            greedy=len(sampled) < len(settings),
            plain=not all(filtered),
            filtered=any(filtered),
            revises=any(s.revision > 0 for s in settings),
        )

    def __or__(self, other: RowKinds) -> RowKinds:
        return RowKinds(
            self.rules | other.rules,
            self.endings | other.endings,
            self.greedy or other.greedy,
            self.plain or other.plain,
            self.filtered or other.filtered,
            self.revises or other.revises,
        )


NO_ROWS = RowKinds(frozenset(), frozenset(), greedy=False, plain=False, filtered=False, revises=False)


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
    endings: torch.Tensor  # (B,) long: END_RULE_CODES[endings]
    revision: torch.Tensor  # (B,) float64: revision sampling's η (0: off)
    seed: torch.Tensor  # (B,) long
    fixed_until: torch.Tensor  # (B,) long: `fixed_until` of the row's canvas; its story ends no earlier
    kinds: RowKinds = RowKinds()  # on the host: what the rows use (every kind when unknown)

    @property
    def length_first(self) -> torch.Tensor:
        """(B,) bool: rows that draw their story's length at their first step."""
        return self.endings == END_RULE_CODES[Endings.LENGTH_FIRST]

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
            "endings": ([END_RULE_CODES[s.endings] for s in settings], torch.long),
            "revision": ([s.revision for s in settings], torch.float64),
            "seed": (list(seeds), torch.long),
            "fixed_until": (list(fixed) if fixed is not None else [0] * len(settings), torch.long),
        }
        tensors = {
            name: to_device(torch.tensor(values, dtype=dtype), device) for name, (values, dtype) in columns.items()
        }
        return cls(**tensors, kinds=RowKinds.of(settings))

    def select(self, rows: torch.Tensor) -> SamplerRows:
        """The settings of `rows` (indices or a (B,) bool mask), in that order."""
        return SamplerRows(**{name: getattr(self, name)[rows] for name in _columns()}, kinds=self.kinds)

    @classmethod
    def concat(cls, parts: Sequence[SamplerRows]) -> SamplerRows:
        """One batch of the rows of every part, in order."""
        kinds = NO_ROWS
        for part in parts:
            kinds = kinds | part.kinds
        return cls(**{name: torch.cat([getattr(p, name) for p in parts]) for name in _columns()}, kinds=kinds)


def _columns() -> list[str]:
    """The names of SamplerRows' (B,) tensors."""
    return [f.name for f in dataclasses.fields(SamplerRows) if f.name != "kinds"]
