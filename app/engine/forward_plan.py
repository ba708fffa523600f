"""How to run one iteration's forward over rows of different lengths: one padded pass, or one per length group.

Padding every row to the longest costs encoder work on the padded positions; a pass per group of
lengths costs one more launch per group. Which is cheaper depends on the device: on a CPU the work
grows with the positions and splitting wins, on a GPU a pass is launch-bound and one padded pass
wins. `ForwardCost` is the measured model (a fixed cost per pass plus a cost per position) and
`group_by_length` picks the cheapest partition of the rows into contiguous length groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BatchForward = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(x (B, L), query, attention_mask (B, L) or None) -> float logits (N, V), row-major. The engine passes
`query` as (N,) flat indices into B * L (found without a host sync); a (B, L) bool mask means the same."""


@dataclass(frozen=True)
class ForwardCost:
    """Seconds for a forward pass over B rows of L positions: `per_pass_s + per_position_s * B * L`."""

    per_pass_s: float
    per_position_s: float

    def of(self, rows: int, width: int) -> float:
        return self.per_pass_s + self.per_position_s * rows * width

    @classmethod
    def measure(
        cls, forward: BatchForward, width: int, mask_id: int, device: torch.device, max_rows: int, repeats: int = 3
    ) -> ForwardCost:
        """Fit the model from timed passes over (1, 8) and (4, `width`) masked rows, best of `repeats`; never
        more than `max_rows` rows, so that a static-shape forward meets no shape outside its plan."""

        def seconds(rows: int, length: int) -> float:
            x = torch.full((rows, length), mask_id, dtype=torch.long, device=device)
            query = torch.arange(rows, device=device) * length  # (rows,) each row's first position
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                forward(x, query, None)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - started)
            return best

        rows, short = min(4, max_rows), min(8, width)
        small, large = seconds(1, short), seconds(rows, width)
        per_position = max(large - small, 0.0) / max(rows * width - short, 1)
        return cls(per_pass_s=max(small - short * per_position, 0.0), per_position_s=per_position)


ONE_PASS = ForwardCost(per_pass_s=float("inf"), per_position_s=0.0)
"""A model under which splitting never pays: one padded pass, until the engine measured its device."""


def group_by_length(lengths: Sequence[int], cost: ForwardCost) -> list[list[int]]:
    """Partition row indices into groups, each run as one pass padded to its longest row, at least cost.

    Rows are sorted by length and cut into contiguous runs by dynamic programming over the distinct
    lengths (few in practice), so the search costs O(distinct²), not O(rows²).
    """
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    distinct = sorted(set(lengths))
    upto = [sum(1 for n in lengths if n <= length) for length in distinct]  # rows with length <= distinct[i]
    best = [0.0] + [float("inf")] * len(distinct)  # best[i]: cost of the rows with the i shortest lengths
    cut = [0] * (len(distinct) + 1)
    for end in range(1, len(distinct) + 1):
        for start in range(end):
            rows = upto[end - 1] - (upto[start - 1] if start else 0)
            total = best[start] + cost.of(rows, distinct[end - 1])
            if total < best[end]:
                best[end], cut[end] = total, start
    groups, end = [], len(distinct)
    while end > 0:
        start = cut[end]
        low, high = (upto[start - 1] if start else 0), upto[end - 1]
        groups.append(order[low:high])
        end = start
    return groups[::-1]
