"""The running batch on the device: every active sequence's tokens, step counter, settings and next plan.

Rows of different lengths share one (B, W) tensor, right-padded with PAD (never masked, so never
revealed) and hidden from attention by a mask. One `advance` runs a batched step for every row:
the forward over the rows whose plan needs logits (grouped by length when the measured cost model
says a split is cheaper), the pure sampler step, the plan of the next step, and then ONE copy to
the host carrying everything the engine publishes: the reveals of streaming rows, the tokens of rows
that publish or finish, and which rows need the model next time. Rows join and leave between
iterations; the plan of a row that just joined is made with the next step, so joining costs no copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.sampling import (
    Pinned,
    SamplerRows,
    StepPlan,
    apply_step,
    fixed_until,
    initial_tokens,
    plan_step,
)
from app.diffusion.story_length import EndTokens
from app.engine.forward_plan import ONE_PASS, BatchForward, group_by_length


@dataclass(frozen=True)
class NewRow:
    """A sequence joining the batch."""

    prefix: Sequence[int]
    length: int
    settings: SamplerSettings
    seed: int
    stream_every: int | None  # publish every k-th step (and the last); None: only the end
    pinned: Pinned = ()


@dataclass(frozen=True)
class RowResult:
    """What one step did to one row, on the host."""

    reveals: list[tuple[int, int, float]]  # (position, token id, probability); streaming rows only
    ids: list[int] | None  # the row's tokens after the step, when asked for
    queried: bool  # the model ran for this row in this step


@dataclass(frozen=True)
class AdvanceResult:
    """One iteration on the host: per-row results and the rows in each forward pass it ran."""

    rows: list[RowResult]
    pass_sizes: list[int]


class RunningBatch:
    """Device tensors of the active rows, in the order the engine keeps its sequences."""

    def __init__(self, mask_id: int, pad_id: int, device: torch.device, end_ids: Sequence[int] = ()) -> None:
        self.mask_id, self.pad_id, self.device = mask_id, pad_id, device
        self.ends = EndTokens.build(end_ids, pad_id, device)  # PAD, SEP, EOS
        self.x = torch.empty((0, 0), dtype=torch.long, device=device)  # (B, W)
        self.index = torch.empty(0, dtype=torch.long, device=device)  # (B,) steps done
        self.stream_every = torch.empty(0, dtype=torch.long, device=device)  # (B,) 0: not streaming
        self.rows = SamplerRows.build([], [], device)
        self.lengths: list[int] = []  # host: each row's real length
        self.needs_model: list[bool] = []  # host: does the row's next plan query anything?
        self.plan: StepPlan | None = None  # the next step's plan; None: make it before the step
        self.cost = ONE_PASS

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, new: Sequence[NewRow]) -> None:
        """Append rows (all masked after their prefix); their plan is made with the next step."""
        if not new:
            return
        width = max([*self.lengths, *(row.length for row in new)])
        fresh = torch.full((len(new), width), self.pad_id, dtype=torch.long, device=self.device)  # (b, W)
        for i, row in enumerate(new):
            fresh[i, : row.length] = initial_tokens(row.prefix, row.length, self.mask_id, self.device, row.pinned)
        self.x = torch.cat([self._widened(width), fresh])
        self.index = torch.cat([self.index, torch.zeros(len(new), dtype=torch.long, device=self.device)])
        every = torch.tensor([row.stream_every or 0 for row in new], dtype=torch.long, device=self.device)
        self.stream_every = torch.cat([self.stream_every, every])
        fixed = [fixed_until(row.prefix, row.pinned) for row in new]
        added = SamplerRows.build([row.settings for row in new], [row.seed for row in new], self.device, fixed)
        self.rows = SamplerRows.concat([self.rows, added])
        self.lengths += [row.length for row in new]
        self.needs_model += [True] * len(new)
        self.plan = None

    def keep(self, kept: Sequence[bool]) -> None:
        """Drop the rows whose flag is False, keeping the order of the rest."""
        if all(kept):
            return
        rows = torch.tensor(kept, dtype=torch.bool, device=self.device)
        self.lengths = [n for n, k in zip(self.lengths, kept, strict=True) if k]
        self.needs_model = [n for n, k in zip(self.needs_model, kept, strict=True) if k]
        self.x = self.x[rows][:, : max(self.lengths, default=0)]  # the longest row may have left
        self.index, self.stream_every, self.rows = self.index[rows], self.stream_every[rows], self.rows.select(rows)
        if self.plan is not None:
            self.plan = self.plan.select(rows, self.x.shape[1])

    def advance(self, forward: BatchForward) -> AdvanceResult:
        """One denoising step for every row. Rows that publish this step (every `stream_every`-th and the
        last) get their tokens back, streaming rows their reveals. All or nothing: if anything raises,
        the batch is as it was, so the step can be retried on fewer rows."""
        plan = self.plan if self.plan is not None else plan_step(self.x, self.index, self.rows, self.mask_id)
        logits, pass_sizes = self._logits(forward, plan)
        step = apply_step(self.x, self.index, plan, logits, self.rows, self.mask_id, self.ends)
        index = self.index + 1
        next_plan = plan_step(step.x, index, self.rows, self.mask_id)
        streamed = self.stream_every[step.rows] > 0  # (N,) reveals that someone reads
        every = self.stream_every.clamp_min(1)  # (B,)
        wanted = (index == self.rows.steps) | ((self.stream_every > 0) & (index % every == 0))  # (B,)
        payload = torch.cat(
            [  # one device-to-host copy; ids and positions are exact in float64
                streamed.sum().to(torch.float64).reshape(1),
                next_plan.query.any(dim=1).to(torch.float64),
                wanted.to(torch.float64),
                plan.query.any(dim=1).to(torch.float64),
                *(t[streamed].to(torch.float64) for t in (step.rows, step.positions, step.token_ids, step.probs)),
                step.x[wanted].flatten().to(torch.float64),
            ]
        ).cpu()
        results, needs_model = self._unpack(payload)
        self.x, self.index, self.plan, self.needs_model = step.x, index, next_plan, needs_model
        return AdvanceResult(results, pass_sizes)

    def subset(self, rows: Sequence[int]) -> RunningBatch:
        """A separate batch holding copies of `rows`: to try a step on them without touching this one."""
        part = RunningBatch(self.mask_id, self.pad_id, self.device)
        part.ends = self.ends
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        part.lengths = [self.lengths[i] for i in rows]
        part.needs_model = [self.needs_model[i] for i in rows]
        part.x = self.x[index][:, : max(part.lengths, default=0)]
        part.index, part.stream_every, part.rows = self.index[index], self.stream_every[index], self.rows.select(index)
        part.cost = self.cost
        return part

    def tokens(self, row: int) -> list[int]:
        """Row `row`'s tokens now, masks included (a draft to hand back when a request stops early)."""
        return self.x[row, : self.lengths[row]].tolist()

    def _unpack(self, payload: torch.Tensor) -> tuple[list[RowResult], list[bool]]:
        """Per-row results from the copied payload, and which rows need the model next."""
        batch, n = len(self.lengths), int(payload[0])
        flags = payload[1 : 1 + 3 * batch].bool().tolist()
        needs_model, want_ids, queried = flags[:batch], flags[batch : 2 * batch], flags[2 * batch :]
        start = 1 + 3 * batch
        rows, positions, ids = payload[start : start + 3 * n].long().view(3, n).tolist()
        probs = payload[start + 3 * n : start + 4 * n].tolist()
        reveals: list[list[tuple[int, int, float]]] = [[] for _ in range(batch)]
        for row, pos, token, p in zip(rows, positions, ids, probs, strict=True):
            reveals[row].append((pos, token, p))
        tokens = payload[start + 4 * n :].long().view(-1, self.x.shape[1]).tolist()  # (wanted rows, W)
        wanted_rows = iter(tokens)
        results = [
            RowResult(reveals[i], next(wanted_rows)[: self.lengths[i]] if wanted else None, queried[i])
            for i, wanted in enumerate(want_ids)
        ]
        return results, needs_model

    def _logits(self, forward: BatchForward, plan: StepPlan) -> tuple[torch.Tensor | None, list[int]]:
        """Logits (N, V) at `plan.query` in row-major order, from one pass per length group of the rows
        that need the model; None when no row does."""
        needy = [i for i, needs in enumerate(self.needs_model) if needs]
        if not needy:
            return None, []
        if self.device.type != "cpu":  # a GPU pass is launch-bound: all rows, no gather of a subset
            needy = list(range(len(self.lengths)))
        groups = group_by_length([self.lengths[i] for i in needy], self.cost)
        if len(groups) == 1:
            rows = needy
            width = max(self.lengths[i] for i in rows)
            return self._forward_rows(forward, plan, rows, width), [len(rows)]
        rank = plan.query.flatten().cumsum(0).view(plan.query.shape) - 1  # (B, W) where each query's logits go
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in groups:
            rows = [needy[i] for i in group]
            width = max(self.lengths[i] for i in rows)
            index = torch.tensor(rows, device=self.device)
            logits = self._forward_rows(forward, plan, rows, width)
            parts.append((rank[index, :width][plan.query[index, :width]], logits))
        total = sum(len(where) for where, _ in parts)
        out = parts[0][1].new_empty((total, parts[0][1].shape[-1]))
        for where, logits in parts:
            out[where] = logits
        return out, [len(group) for group in groups]

    def _forward_rows(self, forward: BatchForward, plan: StepPlan, rows: list[int], width: int) -> torch.Tensor:
        """One pass over `rows`, cut to `width` positions, padding hidden by an attention mask."""
        index = torch.tensor(rows, device=self.device) if len(rows) < len(self.lengths) else None
        x = self.x if index is None else self.x[index]
        query = plan.query if index is None else plan.query[index]
        lengths = [self.lengths[i] for i in rows]
        attention_mask = None
        if min(lengths) < width:
            real = torch.tensor(lengths, device=self.device)
            attention_mask = (torch.arange(width, device=self.device)[None, :] < real[:, None]).long()  # (b, W)
        return forward(x[:, :width], query[:, :width], attention_mask)

    def _widened(self, width: int) -> torch.Tensor:
        """The current tokens padded on the right to `width` positions."""
        if self.x.shape[1] >= width:
            return self.x
        pad = torch.full((self.x.shape[0], width - self.x.shape[1]), self.pad_id, dtype=torch.long, device=self.device)
        return torch.cat([self.x, pad], dim=1)
