"""Counters the engine keeps about its own work, readable from any thread."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds (seconds) of the request-duration histogram: a GPU story to a slow CPU one."""


@dataclass(frozen=True)
class DurationHistogram:
    """Completed requests by duration (submission to last step): cumulative counts per upper bound."""

    buckets: dict[float, int]  # upper bound -> requests that took at most that long
    count: int
    sum_s: float


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the engine's counters."""

    active: int  # sequences in the running batch
    waiting: int  # requests queued for a batch slot
    iterations: int  # engine steps (each advances every active sequence by one denoising step)
    forward_calls: int  # model forward passes (steps whose sequences needed no logits skip it)
    batch_sizes: dict[int, int]  # sequences per forward pass -> how many passes had that many
    submitted: int
    completed: int
    cancelled: int
    timed_out: int
    failed: int
    rejected: int  # refused with QueueFull

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)


@dataclass
class EngineStats:
    """Thread-safe counters: the engine thread writes, request handlers and tests read."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _batch_sizes: Counter = field(default_factory=Counter)
    _counts: Counter = field(default_factory=Counter)
    _active: int = 0
    _waiting: int = 0
    _duration_counts: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS_S))
    _duration_sum_s: float = 0.0

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def completed(self, elapsed_s: float) -> None:
        """A request finished after `elapsed_s` seconds (queueing included)."""
        with self._lock:
            self._counts["completed"] += 1
            self._duration_sum_s += elapsed_s
            bucket = bisect.bisect_left(DURATION_BUCKETS_S, elapsed_s)  # the first bound >= elapsed_s
            if bucket < len(DURATION_BUCKETS_S):  # above the last bound: counted under +Inf only
                self._duration_counts[bucket] += 1

    def durations(self) -> DurationHistogram:
        """The duration histogram of completed requests, cumulative as Prometheus expects."""
        with self._lock:
            cumulative, running = {}, 0
            for bound, n in zip(DURATION_BUCKETS_S, self._duration_counts, strict=True):
                running += n
                cumulative[bound] = running
            return DurationHistogram(cumulative, self._counts["completed"], self._duration_sum_s)

    def forward(self, batch_size: int) -> None:
        with self._lock:
            self._counts["forward_calls"] += 1
            self._batch_sizes[batch_size] += 1

    def occupancy(self, active: int, waiting: int) -> None:
        with self._lock:
            self._active, self._waiting = active, waiting

    def queued(self, waiting: int) -> None:
        """The queue length right after a submission, while the engine may be busy in a forward."""
        with self._lock:
            self._waiting = waiting

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            counts = dict(self._counts)
            return StatsSnapshot(
                active=self._active,
                waiting=self._waiting,
                batch_sizes=dict(sorted(self._batch_sizes.items())),
                **{
                    name: counts.get(name, 0)
                    for name in (
                        "iterations",
                        "forward_calls",
                        "submitted",
                        "completed",
                        "cancelled",
                        "timed_out",
                        "failed",
                        "rejected",
                    )
                },
            )
