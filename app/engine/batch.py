"""The running batch on the device: every active sequence's tokens, step counter, settings and next plan.

Rows of different lengths share one (B, W) tensor, right-padded with PAD (never masked, so never
revealed) and hidden from attention by a mask. One `advance` runs a batched step for every row:
the forward over the rows whose plan needs logits (grouped by length when the measured cost model
says a split is cheaper), the pure sampler step, the plan of the next step, and then ONE copy to
the host carrying everything the engine publishes: the reveals of streaming rows, the tokens of rows
that publish or finish, and which rows need the model next time. Rows join and leave between
iterations; the plan of a row that just joined is made with the next step, so joining costs no copy.

Everything the step branches on is known on the host, so nothing in it waits for the device: which
rows stream or publish (their step counts), what kinds of settings the rows use (`RowKinds`), and how
many positions each row queries (copied with the previous step's payload, or planned on the host for
a row that just joined), which sizes every gather of queried positions (`Queried`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.diffusion.devices import to_device
from app.diffusion.queried import Queried
from app.diffusion.sampler_rows import RowKinds, SamplerRows
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.sampling import Step, StepPlan, apply_step, fixed_until, initial_tokens, plan_step
from app.diffusion.story_length import EndTokens
from app.engine.forward_plan import ONE_PASS, BatchForward, group_by_length
from app.engine.request import GenerationSpec

REMASKED = -2
"""A streaming row's payload code for a position its step returned to the mask (-1: unchanged)."""

NewRow = GenerationSpec
"""A sequence joining the batch: the spec its request was submitted with."""


@dataclass(frozen=True)
class RowResult:
    """What one step did to one row, on the host."""

    reveals: list[tuple[int, int, float]]  # (position, token id, probability); streaming rows only
    remasked: list[int]  # positions returned to the mask (revision sampling); streaming rows only
    ids: list[int] | None  # the row's tokens after the step, when asked for
    queried: bool  # the model ran for this row in this step


@dataclass(frozen=True)
class AdvanceResult:
    """One iteration on the host: per-row results and the rows in each forward pass it ran."""

    rows: list[RowResult]
    pass_sizes: list[int]


class RunningBatch:
    """Device tensors of the active rows, in the order the engine keeps its sequences, and what the host
    knows of each row."""

    def __init__(self, mask_id: int, pad_id: int, device: torch.device, end_ids: Sequence[int] = ()) -> None:
        self.mask_id, self.pad_id, self.device = mask_id, pad_id, device
        self.ends = EndTokens.build(end_ids, pad_id, device)  # PAD, SEP, EOS
        self.x = torch.empty((0, 0), dtype=torch.long, device=device)  # (B, W)
        self.writable = torch.empty((0, 0), dtype=torch.bool, device=device)  # (B, W) masked at the start
        self.index = torch.empty(0, dtype=torch.long, device=device)  # (B,) steps done
        self.every = torch.empty(0, dtype=torch.long, device=device)  # (B,) stream_every on the device; 0: none
        self.real = torch.empty(0, dtype=torch.long, device=device)  # (B,) each row's real length, for the mask
        self.rows = SamplerRows.build([], [], device)
        self.lengths: list[int] = []  # host: each row's real length
        self.settings: list[SamplerSettings] = []  # host: each row's settings
        self.stream_every: list[int] = []  # host: publish every k-th step; 0: only the end
        self.steps_done: list[int] = []  # host: the same as `index`
        self.queries: list[int] = []  # host: how many positions each row's next step queries
        self.plan: StepPlan | None = None  # the next step's plan; None: make it before the step
        self.cost = ONE_PASS

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def needs_model(self) -> list[bool]:
        """Per row: does its next step query anything?"""
        return [n > 0 for n in self.queries]

    def add(self, new: Sequence[NewRow]) -> None:
        """Append rows (all masked after their prefix); their first plan is made on the host, to know its size."""
        if not new:
            return
        width = max([*self.lengths, *(row.length for row in new)])
        fresh = torch.full((len(new), width), self.pad_id, dtype=torch.long)  # (b, W) on the host
        for i, row in enumerate(new):
            fresh[i, : row.length] = initial_tokens(row.prefix, row.length, self.mask_id, "cpu", row.pinned)
        fixed = [fixed_until(row.prefix, row.pinned) for row in new]
        settings, seeds = [row.sampler for row in new], [row.seed for row in new]
        first = plan_step(
            fresh, torch.zeros(len(new), dtype=torch.long), SamplerRows.build(settings, seeds), self.mask_id
        )
        self.queries += first.query.sum(dim=1).tolist()  # host tensors: no device involved
        fresh = to_device(fresh, self.device)
        self.x = torch.cat([self._widened(width, self.x, self.pad_id), fresh])
        self.writable = torch.cat([self._widened(width, self.writable, False), fresh == self.mask_id])
        self.index = torch.cat([self.index, torch.zeros(len(new), dtype=torch.long, device=self.device)])
        facts = torch.tensor([[row.stream_every or 0, row.length] for row in new], dtype=torch.long)  # (b, 2)
        facts = to_device(facts, self.device)
        self.every, self.real = torch.cat([self.every, facts[:, 0]]), torch.cat([self.real, facts[:, 1]])
        self.rows = SamplerRows.concat([self.rows, SamplerRows.build(settings, seeds, self.device, fixed)])
        self.lengths += [row.length for row in new]
        self.settings += settings
        self.stream_every += [row.stream_every or 0 for row in new]
        self.steps_done += [0] * len(new)
        self.plan = None

    def keep(self, kept: Sequence[bool]) -> None:
        """Drop the rows whose flag is False, keeping the order of the rest."""
        if all(kept):
            return
        self._take([i for i, k in enumerate(kept) if k], self)

    def advance(self, forward: BatchForward) -> AdvanceResult:
        """One denoising step for every row. Rows that publish this step (every `stream_every`-th and the
        last) get their tokens back, streaming rows their reveals. All or nothing: if anything raises,
        the batch is as it was, so the step can be retried on fewer rows."""
        plan = self.plan if self.plan is not None else self._plan(self.x, self.index)
        logits, pass_sizes = self._logits(forward, plan)
        step = apply_step(self.x, self.index, plan, logits, self.rows, self.mask_id, self.ends, sum(self.queries))
        index = self.index + 1
        next_plan = self._plan(step.x, index)
        done = [n + 1 for n in self.steps_done]
        streaming = [i for i, every in enumerate(self.stream_every) if every]
        wanted = [
            i
            for i, (n, every, s) in enumerate(zip(done, self.stream_every, self.settings, strict=True))
            if n == s.steps or (every and n % every == 0)
        ]
        host = self._payload(step, index, next_plan, len(streaming), len(wanted)).cpu()  # the one device-to-host copy
        results = self._unpack(host, streaming, wanted)
        self.x, self.index, self.plan, self.steps_done = step.x, index, next_plan, done
        self.queries = host[: len(self)].tolist()
        return AdvanceResult(results, pass_sizes)

    def subset(self, rows: Sequence[int]) -> RunningBatch:
        """A separate batch holding copies of `rows`: to try a step on them without touching this one."""
        part = RunningBatch(self.mask_id, self.pad_id, self.device)
        part.ends, part.cost = self.ends, self.cost
        self._take(list(rows), part)
        return part

    def tokens(self, row: int) -> list[int]:
        """Row `row`'s tokens now, masks included (a draft to hand back when a request stops early)."""
        return self.x[row, : self.lengths[row]].tolist()

    def _take(self, rows: list[int], into: RunningBatch) -> None:
        """Set `into` (this batch or a new one) to the given rows of this batch, in that order."""
        index = to_device(torch.tensor(rows, dtype=torch.long), self.device)
        into.lengths = [self.lengths[i] for i in rows]
        into.settings = [self.settings[i] for i in rows]
        into.stream_every = [self.stream_every[i] for i in rows]
        into.steps_done = [self.steps_done[i] for i in rows]
        into.queries = [self.queries[i] for i in rows]
        width = max(into.lengths, default=0)  # the longest row may have left
        plan = self.plan
        into.x, into.index = self.x.index_select(0, index)[:, :width], self.index.index_select(0, index)
        into.writable = self.writable.index_select(0, index)[:, :width]
        into.every, into.real = self.every.index_select(0, index), self.real.index_select(0, index)
        selected = self.rows.select(index)
        into.rows = SamplerRows(**{**vars(selected), "kinds": RowKinds.of(into.settings)})
        into.plan = None if plan is None else plan.select(index, width)

    def _payload(self, step: Step, index: torch.Tensor, plan: StepPlan, streaming: int, wanted: int) -> torch.Tensor:
        """One int64 tensor: each row's next query count, the streaming rows' reveals (token, REMASKED or
        -1, and the probability's float32 bits), and the publishing rows' tokens. The host knows how many rows
        stream and publish, which sizes their gathers: no index tensor crosses to the device mid-step."""
        parts = [plan.query.sum(dim=1)]  # (B,)
        if streaming:
            rows = torch.nonzero_static(self.every > 0, size=streaming).squeeze(1)  # (S,)
            revealed = step.revealed.index_select(0, rows)  # (S, W)
            remasked = step.remasked.index_select(0, rows)  # (S, W)
            codes = torch.where(revealed, step.x.index_select(0, rows), torch.where(remasked, REMASKED, -1))
            parts.append(codes.flatten())
            probs = step.reveal_probs.index_select(0, rows).contiguous()
            parts.append(probs.view(torch.int32).flatten().long())  # the float32 bits, exact
        if wanted:
            publish = (index == self.rows.steps) | ((self.every > 0) & (index % self.every.clamp_min(1) == 0))  # (B,)
            parts.append(step.x.index_select(0, torch.nonzero_static(publish, size=wanted).squeeze(1)).flatten())
        return torch.cat(parts)

    def _unpack(self, host: torch.Tensor, streaming: list[int], wanted: list[int]) -> list[RowResult]:
        """Per-row results from the copied payload (host tensors only)."""
        batch, width = len(self), self.x.shape[1]
        reveals: list[list[tuple[int, int, float]]] = [[] for _ in range(batch)]
        remasked: list[list[int]] = [[] for _ in range(batch)]
        start = batch
        if streaming:
            size = len(streaming) * width
            tokens = host[start : start + size].view(len(streaming), width)
            probs = host[start + size : start + 2 * size].int().view(torch.float32).view(len(streaming), width)
            start += 2 * size
            where, position = (tokens >= 0).nonzero(as_tuple=True)
            for s, pos, token, p in zip(
                where.tolist(), position.tolist(), tokens[where, position].tolist(), probs[where, position].tolist(),
                strict=True,
            ):  # fmt: skip
                reveals[streaming[s]].append((pos, token, p))
            for s, pos in zip(*(tokens == REMASKED).nonzero(as_tuple=True), strict=True):
                remasked[streaming[int(s)]].append(int(pos))
        ids: list[list[int] | None] = [None] * batch
        for row, tokens_now in zip(wanted, host[start:].view(-1, width).tolist() if wanted else [], strict=True):
            ids[row] = tokens_now[: self.lengths[row]]
        return [RowResult(reveals[i], remasked[i], ids[i], self.queries[i] > 0) for i in range(batch)]

    def _logits(self, forward: BatchForward, plan: StepPlan) -> tuple[torch.Tensor | None, list[int]]:
        """Logits (N, V) at `plan.query` in row-major order, from one pass per length group of the rows
        that need the model; None when no row does."""
        needy = [i for i, n in enumerate(self.queries) if n]
        if not needy:
            return None, []
        if self.device.type != "cpu":  # a GPU pass is launch-bound: all rows, no gather of a subset
            needy = list(range(len(self.lengths)))
        lengths = [self.lengths[i] for i in needy]
        groups = [sorted(needy[i] for i in group) for group in group_by_length(lengths, self.cost)]  # batch order
        if len(groups) == 1:
            return self._forward_rows(forward, plan, groups[0]), [len(groups[0])]
        rank = plan.query.flatten().cumsum(0).view(plan.query.shape) - 1  # (B, W) where each query's logits go
        parts = []
        for rows in groups:
            width = max(self.lengths[i] for i in rows)
            index = to_device(torch.tensor(rows), self.device)
            at = Queried.of(plan.query.index_select(0, index)[:, :width], sum(self.queries[i] for i in rows))
            parts.append((at.gather(rank.index_select(0, index)[:, :width]), self._forward_rows(forward, plan, rows)))
        out = parts[0][1].new_empty((sum(self.queries), parts[0][1].shape[-1]))  # (N, V)
        for where, logits in parts:
            out.index_copy_(0, where, logits)
        return out, [len(rows) for rows in groups]

    def _forward_rows(self, forward: BatchForward, plan: StepPlan, rows: list[int]) -> torch.Tensor:
        """One pass over `rows`, cut to their longest length, padding hidden by an attention mask; the
        queried positions go to the forward as flat indices."""
        width = max(self.lengths[i] for i in rows)
        index = to_device(torch.tensor(rows), self.device) if len(rows) < len(self.lengths) else None
        x = self.x if index is None else self.x.index_select(0, index)
        query = plan.query if index is None else plan.query.index_select(0, index)
        attention_mask = None
        if min(self.lengths[i] for i in rows) < width:
            real = self.real if index is None else self.real.index_select(0, index)  # (b,)
            attention_mask = (torch.arange(width, device=self.device)[None, :] < real[:, None]).long()  # (b, W)
        at = Queried.of(query[:, :width], sum(self.queries[i] for i in rows))
        return forward(x[:, :width], at.flat, attention_mask)

    def _plan(self, x: torch.Tensor, index: torch.Tensor) -> StepPlan:
        """The plan of the step `index` (B,) takes from `x` (B, W)."""
        return plan_step(x, index, self.rows, self.mask_id, self.writable, self.ends)

    def _widened(self, width: int, rows: torch.Tensor, fill: int | bool) -> torch.Tensor:
        """`rows` (B, W') padded on the right with `fill` to `width` positions."""
        if rows.shape[1] >= width:
            return rows
        pad = torch.full((rows.shape[0], width - rows.shape[1]), fill, dtype=rows.dtype, device=self.device)
        return torch.cat([rows, pad], dim=1)
