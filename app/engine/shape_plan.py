"""The one declaration of the (rows, width) shapes a static-shape forward will ever run.

A CUDA graph (or a `torch.compile` graph with `dynamic=False`) holds one shape; a shape met for the first
time inside a request would compile or capture there and stall the whole batch. So the plan is fixed
when the engine is built, from its two limits: rows up to `max_batch` and positions up to the model's.

- Rows: powers of two below `max_batch`, then `max_batch` itself (1, 2, 4, ..., max_batch): a batch
  pads to at most twice its rows, and the number of row buckets grows with log2(max_batch).
- Widths: multiples of 64 below the model's positions, then its positions (64, 128, ..., 512). Fewer
  widths (every row padded to the model's length) would shorten the warm-up, but multiply the encoder's
  work of every short story by up to positions / length (a 64-token story padded to 512: 8x), every
  step. A shape is cheap to prepare when it is a captured graph (a few eager passes, no compiler:
  `static_forward.py`), so the plan keeps the widths and pays for them once, at warm-up.

The shipped model (256 positions) at max_batch 32 has 6 x 4 = 24 shapes; a 512-position model at
max_batch 256, 9 x 8 = 72. A call outside the plan is a bug, not a slow path: `bucket` asserts.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH_MULTIPLE = 64

Shape = tuple[int, int]
"""(rows, width) of one padded forward pass."""


def row_buckets(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `max_rows`, then `max_rows`."""
    powers = [1 << k for k in range(max_rows.bit_length()) if 1 << k < max_rows]
    return (*powers, max_rows)


def width_buckets(max_positions: int) -> tuple[int, ...]:
    """64, 128, ... below `max_positions`, then `max_positions`."""
    return (*range(WIDTH_MULTIPLE, max_positions, WIDTH_MULTIPLE), max_positions)


def round_up(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket at or above `value` (the buckets ascend)."""
    return next(bucket for bucket in buckets if bucket >= value)


@dataclass(frozen=True)
class ShapePlan:
    """Every (rows, width) bucket a forward runs, for an engine of `max_rows` rows and a model of
    `max_positions` positions."""

    rows: tuple[int, ...]
    widths: tuple[int, ...]

    @classmethod
    def of(cls, max_rows: int, max_positions: int) -> ShapePlan:
        if max_rows < 1 or max_positions < 1:
            raise ValueError(f"a shape plan needs rows and positions, got {max_rows} and {max_positions}")
        return cls(row_buckets(max_rows), width_buckets(max_positions))

    @property
    def shapes(self) -> list[Shape]:
        """Every shape, the largest first: graphs captured in this order reuse the largest one's memory."""
        return [(rows, width) for rows in reversed(self.rows) for width in reversed(self.widths)]

    def __len__(self) -> int:
        return len(self.rows) * len(self.widths)

    def bucket(self, rows: int, width: int) -> Shape:
        """The planned shape a (rows, width) pass pads to; a pass larger than the plan is a bug."""
        assert 1 <= rows <= self.rows[-1], f"{rows} rows: the plan stops at {self.rows[-1]}"
        assert 1 <= width <= self.widths[-1], f"width {width}: the plan stops at {self.widths[-1]}"
        return round_up(rows, self.rows), round_up(width, self.widths)
