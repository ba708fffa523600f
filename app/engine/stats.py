"""Counters the engine keeps about its own work, readable from any thread."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


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

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

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
                        "iterations", "forward_calls", "submitted", "completed", "cancelled",
                        "timed_out", "failed", "rejected",
                    )
                },
            )
