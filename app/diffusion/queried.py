"""A step's queried positions as fixed-shape index tensors, found without waiting for the device.

Boolean-mask indexing (`t[query]`) and `nonzero` size their output from the mask's values, so on a GPU
each one waits for the device. The engine knows how many positions a step queries on the host (it
copies the count with the previous step's payload), so `nonzero_static` with that size finds them
without a sync, and values move between the (N,) queried order and (B, L) by gather and scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Queried:
    """The N queried positions of a (B, L) mask in row-major order."""

    flat: torch.Tensor  # (N,) long: row * L + position
    row: torch.Tensor  # (N,) long
    position: torch.Tensor  # (N,) long
    shape: tuple[int, int]  # (B, L)

    @classmethod
    def of(cls, query: torch.Tensor, count: int) -> Queried:
        """The positions of `query` (B, L) bool, which holds exactly `count` True values."""
        flat = torch.nonzero_static(query.flatten(), size=count).squeeze(1)  # (N,)
        width = query.shape[1]
        return cls(flat, flat // width, flat % width, (query.shape[0], width))

    def spread(self, values: torch.Tensor, fill: float | int | bool | torch.Tensor) -> torch.Tensor:
        """(B, L) holding `values` (N,) at the queried positions and `fill` (a scalar or (B, L)) elsewhere."""
        if isinstance(fill, torch.Tensor):
            out = fill.to(values.dtype).flatten().clone()
        else:
            out = torch.full((self.shape[0] * self.shape[1],), fill, dtype=values.dtype, device=values.device)
        return out.index_copy(0, self.flat, values).view(self.shape)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) the queried positions' entries of `values` (B, L)."""
        return values.flatten().index_select(0, self.flat)
