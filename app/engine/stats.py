"""Counters the engine keeps about its own work, readable from any thread.

`StatsSnapshot`'s fields are the one declaration of the counters: `COUNTERS` and `OUTCOMES` (the
request outcomes) are read from them, and so are `/info`'s engine fields and `/metrics`' labels.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Literal

DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds (seconds) of the request-duration histogram: a GPU story to a slow CPU one."""
FORWARD_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)
"""Upper bounds of the forwards-per-request histogram: one forward to the most steps a request may ask."""
TOKENS_PER_FORWARD_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)
"""Upper bounds of the tokens-per-forward histogram: 1 is one token a step, far above it the fast rules."""

CounterKind = Literal["work", "outcome"]


def _described(doc: str, counter: CounterKind | None = None) -> Any:
    """A snapshot field and its documentation; `counter`: a count of engine work or of request outcomes."""
    return field(metadata={"doc": doc, "counter": counter})


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the engine's counters."""

    active: int = _described("Sequences in the running batch.")
    waiting: int = _described("Requests queued for a batch slot.")
    iterations: int = _described("Engine steps; each advances every active sequence by one denoising step.", "work")
    forward_calls: int = _described("Model forward passes (steps whose sequences need no logits skip it).", "work")
    batch_sizes: dict[int, int] = _described("Sequences per forward pass -> number of passes.")  # noqa: RUF009 (no default)
    submitted: int = _described("Requests accepted into the queue.", "outcome")
    completed: int = _described("Requests denoised to the last step.", "outcome")
    cancelled: int = _described("Requests whose client left before the end.", "outcome")
    timed_out: int = _described("Requests that ran past their deadline.", "outcome")
    failed: int = _described("Requests ended by an engine failure or by shutdown.", "outcome")
    rejected: int = _described("Requests refused with QueueFull (429).", "outcome")
    behind: int = _described(
        "Admitted requests that a later admission estimate found behind their deadline (they may still finish).",
        "work",
    )

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)


COUNTERS = tuple(f.name for f in fields(StatsSnapshot) if f.metadata["counter"] is not None)
"""Every name `EngineStats.count` takes (and `forward`, `completed` count)."""
OUTCOMES = tuple(f.name for f in fields(StatsSnapshot) if f.metadata["counter"] == "outcome")
"""Requests by what became of them: the `outcome` label of `storydiff_requests_total`."""
FIELD_DOCS = {f.name: str(f.metadata["doc"]) for f in fields(StatsSnapshot)}


@dataclass(frozen=True)
class Histogram:
    """Observations by upper bound, cumulative as Prometheus expects, with their count and sum."""

    buckets: dict[float, int]  # upper bound -> observations at most that large
    count: int
    sum: float

    @property
    def sum_s(self) -> float:
        """The sum of a histogram of seconds (request durations)."""
        return self.sum


@dataclass
class _Observations:
    """One histogram's running counts per bucket (not cumulative); guarded by the stats' lock."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        bucket = bisect.bisect_left(self.bounds, value)  # the first bound >= value
        if bucket < len(self.bounds):  # above the last bound: counted under +Inf only
            self.counts[bucket] += 1

    def cumulative(self) -> Histogram:
        running, buckets = 0, {}
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            buckets[bound] = running
        return Histogram(buckets, self.count, self.sum)


@dataclass
class EngineStats:
    """Thread-safe counters: the engine thread writes, request handlers and tests read."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _batch_sizes: Counter[int] = field(default_factory=Counter)
    _counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _active: int = 0
    _waiting: int = 0
    _durations: _Observations = field(default_factory=lambda: _Observations(DURATION_BUCKETS_S))
    _forwards: _Observations = field(default_factory=lambda: _Observations(FORWARD_BUCKETS))
    _tokens_per_forward: _Observations = field(default_factory=lambda: _Observations(TOKENS_PER_FORWARD_BUCKETS))

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to the counter `name`, one of `COUNTERS` (any other name is a KeyError)."""
        with self._lock:
            self._counts[name] += n

    def completed(self, elapsed_s: float, forwards: int | None = None, written: int = 0) -> None:
        """A request finished after `elapsed_s` seconds (queueing included), having run the model
        `forwards` times (None: not counted) to write `written` tokens."""
        with self._lock:
            if forwards is not None:
                self._forwards.add(forwards)
                if forwards:  # a request with nothing to write runs no forward: no ratio to count
                    self._tokens_per_forward.add(written / forwards)
            self._counts["completed"] += 1
            self._durations.add(elapsed_s)

    def durations(self) -> Histogram:
        """Completed requests by duration (submission to last step), in seconds."""
        with self._lock:
            return self._durations.cumulative()

    def forwards_per_request(self) -> Histogram:
        """Completed requests by the model forwards each took."""
        with self._lock:
            return self._forwards.cumulative()

    def tokens_per_forward(self) -> Histogram:
        """Completed requests by tokens written per forward: how much each forward bought."""
        with self._lock:
            return self._tokens_per_forward.cumulative()

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
            return StatsSnapshot(
                active=self._active,
                waiting=self._waiting,
                batch_sizes=dict(sorted(self._batch_sizes.items())),
                **self._counts,
            )
