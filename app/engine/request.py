"""What a client asks the engine for, and what the engine sends back while and after denoising."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.sampling import Pinned


class EngineError(RuntimeError):
    """The engine cannot take a request right now."""


class QueueFull(EngineError):
    """Every batch slot and every queue place is taken; retry later."""


class EngineStopped(EngineError):
    """The engine is not running (not started yet, or shutting down)."""


@dataclass(frozen=True)
class GenerationSpec:
    """One story to denoise: fixed prefix, total length, sampler and seed, and tokens pinned anywhere."""

    prefix: tuple[int, ...]
    length: int
    sampler: SamplerSettings
    seed: int
    stream_every: int | None = None  # publish every k-th step (and the last); None: only the outcome
    pinned: Pinned = ()  # (position, token) fixed after the prefix: an ending, text between blanks

    def __post_init__(self) -> None:
        if not self.length >= 1:
            raise ValueError(f"length must be at least 1, got {self.length}")
        if len(self.prefix) > self.length:
            raise ValueError(f"the prefix takes {len(self.prefix)} tokens, more than the length {self.length}")
        if self.stream_every is not None and self.stream_every < 1:
            raise ValueError(f"stream_every must be at least 1, got {self.stream_every}")
        outside = [pos for pos, _ in self.pinned if not len(self.prefix) <= pos < self.length]
        if outside:
            raise ValueError(f"pinned positions {outside} lie outside {len(self.prefix)}..{self.length - 1}")

    @property
    def written(self) -> int:
        """Positions the sampler writes: neither the prefix nor pinned (what tokens per forward counts)."""
        return self.length - len(self.prefix) - len({pos for pos, _ in self.pinned})

    def start_ids(self, mask_id: int) -> tuple[int, ...]:
        """The sequence denoising starts from: prefix, pinned tokens, masks elsewhere (the draft at step 0)."""
        ids = [*self.prefix, *[mask_id] * (self.length - len(self.prefix))]
        for pos, token in self.pinned:
            ids[pos] = token
        return tuple(ids)


@dataclass(frozen=True)
class Reveal:
    """A position a step unmasked: the token written there and its model probability."""

    pos: int
    id: int
    p: float


@dataclass(frozen=True)
class Remask:
    """A written position a step returned to the mask (revision sampling)."""

    pos: int


Change = Reveal | Remask
"""What a step did to one position."""


def net_changes(changes: Sequence[Change]) -> tuple[tuple[Reveal, ...], tuple[int, ...]]:
    """The reveals and remasked positions that bring a reader past `changes` (in order): each position's
    latest change only, so the two never share a position and may be applied in any order."""
    latest: dict[int, Change] = {}
    for change in changes:
        latest.pop(change.pos, None)  # re-inserted last: the order of the latest changes is kept
        latest[change.pos] = change
    reveals = tuple(change for change in latest.values() if isinstance(change, Reveal))
    return reveals, tuple(change.pos for change in latest.values() if isinstance(change, Remask))


@dataclass(frozen=True)
class StepUpdate:
    """The state after `step` of `num_steps`, with everything revealed (and returned to the mask) since
    the last update sent."""

    step: int  # 1-based
    num_steps: int
    t: float  # diffusion time after the step
    ids: tuple[int, ...]  # (L,) tokens after the step, masks included
    changed: tuple[Reveal, ...]
    remasked: tuple[int, ...] = ()  # positions returned to the mask, none of them in `changed`

    @property
    def changes(self) -> tuple[Change, ...]:
        """`changed` and `remasked` as one sequence of changes."""
        return self.changed + tuple(Remask(pos) for pos in self.remasked)

    def merge(self, later: StepUpdate) -> StepUpdate:
        """`later`, carrying this update's changes too: what a reader that skipped this one must see."""
        changed, remasked = net_changes(self.changes + later.changes)
        return StepUpdate(later.step, later.num_steps, later.t, later.ids, changed, remasked)


@dataclass(frozen=True)
class Finished:
    """Denoising ended: the final tokens (no mask left)."""

    ids: tuple[int, ...]
    num_steps: int
    elapsed_s: float  # from submission to the last step, queueing included
    forwards: int = 0  # steps in which the model ran for this request (the others revealed nothing)


FailureReason = Literal["timeout", "shutdown", "internal", "cancelled", "taken_over"]
"""Why a request (or a stream's connection) ended before its last step; the API shows it as the
`error` of its answer. `cancelled` (DELETE) and `taken_over` (another connection resumed the stream)
end a stream's connection, never a JSON answer."""


@dataclass(frozen=True)
class Failed:
    """Denoising stopped before the end; `message` is safe to show to the client."""

    reason: FailureReason
    message: str
    draft: tuple[int, ...] | None = None  # the tokens so far (masks included) when it stopped early


Outcome = Finished | Failed
Update = StepUpdate | Finished | Failed
Publish = Callable[[Update], None]
"""Receives updates on the engine thread; must return at once (hand off, never block)."""

_request_ids = itertools.count(1)


@dataclass(eq=False)
class RequestHandle:
    """The client's side of a submitted request: its id and a way to cancel it."""

    spec: GenerationSpec
    publish: Publish
    deadline: float  # time.monotonic() after which the request fails with a timeout
    id: int = field(default_factory=lambda: next(_request_ids))
    request_id: str | None = None  # the caller's id for it (X-Request-ID), carried into the engine's logs
    client: str = ""  # who asked (app/api/clients.py): the fair queue takes clients in turn
    late: bool = False  # an admission estimate found it behind its deadline (counted once, `behind`)
    submitted: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _on_cancel: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the engine to drop this request before its next step; safe from any thread, idempotent."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._on_cancel()
