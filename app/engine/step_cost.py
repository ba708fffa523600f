"""What an engine iteration costs, measured as the engine runs: the model's forwards and everything else.

The warm-up measures the forward alone (`ForwardCost`); an iteration also plans and applies the step
for every row, and a step that reveals nothing skips the model but not that work (the stub table in
docs/benchmarks.md: 3.5 ms an iteration alone, 19.3 ms at 8 rows). Admission must count both, or many
more steps than tokens look free. That work is over every position of every row (the step plans and
applies over (B, L)), so each iteration the engine reports its positions (Σ rows' lengths), its wall
time and the time spent in forwards; this keeps

    iteration_s(positions, forward) = base_s + per_position_s × positions + scale × forward
    forward                          = Σ ForwardCost.of(rows, width) over its passes

with `base_s`, `per_position_s` a least-squares fit of the non-forward time over recent iterations and
`scale` the ratio of the forward time taken to the time `ForwardCost` predicted (a busy machine runs
slower than at warm-up), both forgetting old iterations at `DECAY` each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.engine.forward_plan import ForwardCost
from app.engine.request import RequestHandle

DECAY = 0.98
"""Weight kept by the past at each iteration: about the last 50 iterations count."""
SPREAD = 0.1
"""The least spread of recent iterations' positions (standard deviation over mean) that separates a
fixed cost from one per position; below it a slope is noise over noise."""
PRIOR_PER_POSITION_S = 1e-5
"""Non-forward seconds per position before any iteration was measured (a CPU's engine overhead, 3 ms a
256-token row)."""


@dataclass(frozen=True)
class Work:
    """What an admitted request has left to do, for the admission estimate."""

    handle: RequestHandle
    length: int  # positions: what its engine work and its forwards grow with
    steps_left: int
    forwards_left: int  # at most one forward a step, and one a position still to write: an upper bound
    running: bool  # in the batch now, rather than waiting for a slot

    @classmethod
    def of(cls, handle: RequestHandle, steps_done: int, forwards_done: int, *, running: bool) -> Work:
        spec = handle.spec
        steps_left = spec.sampler.steps - steps_done
        writes_left = spec.written - forwards_done if spec.sampler.revision == 0 else steps_left  # revisions rewrite
        forwards_left = max(min(steps_left, writes_left), 0)
        return cls(handle, spec.length, steps_left, forwards_left, running)


@dataclass(frozen=True)
class IterationCost:
    """A snapshot of the fitted model, for the admission estimate on another thread."""

    forward: ForwardCost
    base_s: float
    per_position_s: float
    scale: float

    def of(self, positions: int, forward_s: float) -> float:
        """Seconds of an iteration over rows of `positions` positions in all, whose forwards `ForwardCost`
        puts at `forward_s`."""
        return self.base_s + self.per_position_s * positions + self.scale * forward_s


@dataclass
class StepCostModel:
    """The fit, written by the engine thread (`observe`), read by any thread (`snapshot`)."""

    forward: ForwardCost
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Decayed sums for the non-forward time y against positions x, and for the forward's scale.
    _n: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0
    _taken: float = 0.0
    _predicted: float = 0.0

    def observe(self, positions: int, iteration_s: float, forward_s: float, predicted_forward_s: float) -> None:
        """One iteration over `positions` positions took `iteration_s`, `forward_s` of it in forwards that
        `ForwardCost` put at `predicted_forward_s`."""
        other = max(iteration_s - forward_s, 0.0)
        with self._lock:
            self._n = DECAY * self._n + 1
            self._x = DECAY * self._x + positions
            self._y = DECAY * self._y + other
            self._xx = DECAY * self._xx + positions * positions
            self._xy = DECAY * self._xy + positions * other
            if predicted_forward_s > 0:
                self._taken = DECAY * self._taken + forward_s
                self._predicted = DECAY * self._predicted + predicted_forward_s

    def snapshot(self) -> IterationCost:
        with self._lock:
            scale = self._taken / self._predicted if self._predicted > 0 else 1.0
            if self._n < 1:
                return IterationCost(self.forward, 0.0, PRIOR_PER_POSITION_S, 1.0)
            mean_x, mean_y = self._x / self._n, self._y / self._n
            var = self._xx / self._n - mean_x * mean_x
            proportional = mean_y / max(mean_x, 1.0)
            if var < (SPREAD * mean_x) ** 2:  # too alike to separate: all of it per position, the cautious reading
                return IterationCost(self.forward, 0.0, proportional, max(scale, 1.0))
            slope = min(max((self._xy / self._n - mean_x * mean_y) / var, 0.0), proportional)
            base = max(mean_y - slope * mean_x, 0.0)
            return IterationCost(self.forward, base, slope, max(scale, 1.0))
