"""The step-level batching engine: one thread owns the model and advances every request together.

Each iteration admits waiting requests into free batch slots, drops the ones that were cancelled
or ran out of time, and advances every running request by one denoising step with ONE batched
step (`RunningBatch.advance`): each request's settings live in per-row tensors, so requests with
different settings share every kernel, and the forward runs over the rows that need logits. Requests
join and leave between steps (continuous batching, as in TGI's `batching_task`), so a short story
never waits for a long one to finish, and a step that reveals nothing skips the model.

Random numbers are a pure function of (seed, step, position), so a seed gives the same story alone
or in a busy batch (up to floating-point noise in the batched matmuls flipping a near-tie).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.text import end_token_ids
from app.engine.batch import NewRow, RowResult, RunningBatch
from app.engine.forward_plan import BatchForward, ForwardCost
from app.engine.model_forward import CheckpointForward
from app.engine.request import (
    Change,
    EngineStopped,
    Failed,
    Finished,
    GenerationSpec,
    Publish,
    QueueFull,
    Remask,
    RequestHandle,
    Reveal,
    StepUpdate,
    Update,
    net_changes,
)
from app.engine.stats import EngineStats

log = logging.getLogger(__name__)

SHUTDOWN = Failed("shutdown", "the server is shutting down")

WARMUP_LENGTH = 16


@dataclass(eq=False)
class _Sequence:
    """A request in the running batch, on the host: how far it has come and what it has not sent yet."""

    handle: RequestHandle
    index: int = 0  # steps done
    unsent: tuple[Change, ...] = ()  # reveals and remasks since the last published step
    forwards: int = 0  # steps in which the model ran for it
    done: bool = False


class Engine:
    """Owns the model in a background thread; `submit` from any thread, read results via `publish`."""

    def __init__(
        self,
        forward: BatchForward,
        *,
        mask_id: int,
        pad_id: int,
        device: torch.device | str = "cpu",
        max_batch: int = 32,
        max_queue: int = 64,
        typical_length: int = 256,
        on_failure: Callable[[str], None] | None = None,
        end_ids: Sequence[int] = (),
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"need max_batch >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self._forward = forward
        self.mask_id, self.pad_id = mask_id, pad_id
        self.device = torch.device(device)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()  # guarded by _cond
        self._admitted = 0  # waiting + active; guarded by _cond
        self._accepting = False
        self._stopping = False
        self._active: list[_Sequence] = []  # engine thread only, in the order of the batch's rows
        self._batch = RunningBatch(mask_id, pad_id, self.device, end_ids)  # engine thread only
        self.typical_length = typical_length  # the width `warm_up` measures the forward's cost at
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the engine thread died, if it did
        self._on_failure = on_failure  # called on the engine thread when it dies

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        compile: bool | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> Engine:
        """An engine (not started) that serves `checkpoint`'s model on its device; `compile` as in
        `CheckpointForward` (None: CUDA graphs on GPUs, eager on CPUs)."""
        pad = checkpoint.tokenizer.pad_token_id
        return cls(
            CheckpointForward(checkpoint, compile),
            mask_id=checkpoint.mask_id,
            pad_id=checkpoint.mask_id if pad is None else int(pad),
            device=checkpoint.device,
            max_batch=max_batch,
            max_queue=max_queue,
            typical_length=checkpoint.config.seq_len,
            end_ids=sorted(end_token_ids(checkpoint.tokenizer)),
            on_failure=on_failure,
        )

    def warm_up(self, length: int = WARMUP_LENGTH, timeout_s: float = 600.0) -> float:
        """Compile the forward's shapes (if it compiles), denoise one short sequence through the started
        engine, so that the first client pays for no lazy initialisation, then measure the forward's
        cost model; blocks, returns the seconds it took, raises RuntimeError if it failed."""
        started = time.perf_counter()
        length = min(length, self.typical_length)  # a model with fewer positions than the default
        if isinstance(self._forward, CheckpointForward):
            self._forward.prepare(self.max_batch, self.typical_length)
        ended = threading.Event()
        updates: list[Update] = []

        def publish(update: Update) -> None:
            updates.append(update)
            if not isinstance(update, StepUpdate):
                ended.set()

        settings = SamplerSettings(steps=2, remasking=Remasking.LOW_CONFIDENCE)
        self.submit(GenerationSpec((), length, settings, seed=0), publish, timeout_s)
        if not ended.wait(timeout_s) or isinstance(updates[-1], Failed):
            reason = updates[-1].message if updates and isinstance(updates[-1], Failed) else "no answer"
            raise RuntimeError(f"warm-up failed: {reason}")
        self.forward_cost = ForwardCost.measure(self._forward, self.typical_length, self.mask_id, self.device)
        log.info(
            "forward cost: %.2f ms a pass + %.2f us a position",
            self.forward_cost.per_pass_s * 1e3,
            self.forward_cost.per_position_s * 1e6,
        )
        return time.perf_counter() - started

    @property
    def forward_name(self) -> str:
        """Which forward runs: "eager", "compiled (CUDA graphs)", ... (for GET /info and the log)."""
        return self._forward.name if isinstance(self._forward, CheckpointForward) else "custom"

    @property
    def forward_cost(self) -> ForwardCost:
        """The cost model that decides whether rows of different lengths share one padded pass."""
        return self._batch.cost

    @forward_cost.setter
    def forward_cost(self, cost: ForwardCost) -> None:
        self._batch.cost = cost  # read by the engine thread at its next iteration

    @property
    def running(self) -> bool:
        """True while the engine thread is alive and takes requests."""
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the engine thread."""
        if self._thread is not None:
            raise RuntimeError("the engine was already started")
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="storydiff-engine", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 0.0) -> None:
        """Refuse new requests, let admitted ones finish for up to `grace_s`, fail the rest, join."""
        with self._cond:
            self._accepting = False
            self._cond.wait_for(lambda: self._admitted == 0, timeout=grace_s)
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def submit(
        self, spec: GenerationSpec, publish: Publish, timeout_s: float, request_id: str | None = None
    ) -> RequestHandle:
        """Queue `spec`; raises QueueFull when every slot and queue place is taken. `request_id` tags
        the engine's log lines about it."""
        with self._cond:
            if not self._accepting:
                raise EngineStopped("the engine is not running")
            if self._admitted >= self.max_batch + self.max_queue:
                self.stats.count("rejected")
                raise QueueFull(f"{self.max_batch} requests running and {self.max_queue} waiting")
            deadline = time.monotonic() + timeout_s
            handle = RequestHandle(spec, publish, deadline, request_id=request_id, _on_cancel=self._wake)
            self._waiting.append(handle)
            self._admitted += 1
            self.stats.count("submitted")
            self.stats.queued(len(self._waiting))
            self._cond.notify_all()
        return handle

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release(self, n: int = 1) -> None:
        with self._cond:
            self._admitted -= n
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._next_batch():
                    try:
                        self._advance()
                    except Exception:
                        log.exception("engine step failed; failing the %d requests in it", len(self._active))
                        self._fail_active(Failed("internal", "the engine failed during a step"), "failed")
        except BaseException as err:  # the loop itself broke: the engine is dead, and must say so
            self.failure = f"{type(err).__name__}: {err}"
            log.critical("the engine died and serves no more requests: %s", self.failure, exc_info=True)
        finally:
            if self.failure is not None and self._on_failure is not None:
                self._on_failure(self.failure)  # before anyone is answered: /ready says why as the 500s go out
            ending = Failed("internal", "the engine stopped working") if self.failure else SHUTDOWN
            self._fail_active(ending, "failed")
            with self._cond:
                self._accepting = False
                waiting, self._waiting = list(self._waiting), deque()
            for handle in waiting:
                self.stats.count("failed")
                self._publish(handle, ending)
            self._release(len(waiting))
            self.stats.occupancy(0, 0)

    def _next_batch(self) -> bool:
        """Fill free slots from the queue; block while there is nothing to do. False: stop."""
        with self._cond:
            while True:
                self._expire_waiting()
                if self._stopping:
                    return False
                joining: list[RequestHandle] = []
                while self._waiting and len(self._active) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
                self._admit(joining)
                self.stats.occupancy(len(self._active), len(self._waiting))
                if self._active:
                    return True
                self._cond.wait()

    def _admit(self, handles: list[RequestHandle]) -> None:
        """Add requests to the running batch, as rows at its end; a request that cannot join fails alone."""
        rows = [
            NewRow(h.spec.prefix, h.spec.length, h.spec.sampler, h.spec.seed, h.spec.stream_every, h.spec.pinned)
            for h in handles
        ]
        try:
            self._batch.add(rows)
            joined = handles
        except Exception:  # find the request that cannot join; the others join one by one
            joined = []
            for handle, row in zip(handles, rows, strict=True):
                try:
                    self._batch.add([row])
                    joined.append(handle)
                except Exception:
                    log.exception("request %d could not join the batch; failing it", handle.id, extra=_tags(handle))
                    self.stats.count("failed")
                    self._publish(handle, Failed("internal", "the request could not be started"))
                    self._release()
        self._active += [_Sequence(handle) for handle in joined]

    def _expire_waiting(self) -> None:
        """Drop queued requests that were cancelled or timed out (caller holds `_cond`)."""
        now = time.monotonic()
        for handle in [h for h in self._waiting if h.cancelled or now > h.deadline]:
            self._waiting.remove(handle)
            self._admitted -= 1
            if handle.cancelled:
                self.stats.count("cancelled")
            else:
                self.stats.count("timed_out")
                self._publish(handle, Failed("timeout", "the request timed out while queued"))

    def _drop_departed(self) -> None:
        """Remove cancelled and timed-out sequences from the batch before the next step."""
        now = time.monotonic()
        kept = []
        for i, seq in enumerate(self._active):
            if seq.handle.cancelled:
                self.stats.count("cancelled")
                self._release()
            elif now > seq.handle.deadline:
                self.stats.count("timed_out")
                message = f"the request timed out after {seq.index} of {seq.handle.spec.sampler.steps} steps"
                self._publish(seq.handle, Failed("timeout", message, draft=tuple(self._batch.tokens(i))))
                self._release()
            kept.append(not seq.handle.cancelled and now <= seq.handle.deadline)
        self._keep(kept)

    def _keep(self, kept: list[bool]) -> None:
        """Keep the sequences (and batch rows) whose flag is True."""
        self._batch.keep(kept)
        self._active = [seq for seq, k in zip(self._active, kept, strict=True) if k]

    def _advance(self) -> None:
        """One denoising step for every active sequence, in one batched step."""
        self._drop_departed()
        if not self._active:
            return
        try:
            result = self._batch.advance(self._forward)
        except Exception:
            if not self._fail_culprits():
                raise  # no single request fails alone: the batch as a whole (e.g. out of memory)
            if not self._active:
                return
            result = self._batch.advance(self._forward)
        for size in result.pass_sizes:
            self.stats.forward(size)
        for seq, row in zip(self._active, result.rows, strict=True):
            self._record(seq, row)
        self.stats.count("iterations")
        self._keep([not seq.done for seq in self._active])
        self.stats.occupancy(len(self._active), len(self._waiting))

    def _fail_culprits(self) -> bool:
        """After a failed step, try each request's step alone (on a copy) and fail those that fail
        alone, so that one bad request does not fail its batch; False if none does."""
        culprits = []
        for i, seq in enumerate(self._active):
            try:
                self._batch.subset([i]).advance(self._forward)
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
                log.error("request %d fails alone (%s); failing it", seq.handle.id, why, extra=_tags(seq.handle))
                culprits.append(i)
        for i in culprits:
            self.stats.count("failed")
            self._publish(self._active[i].handle, Failed("internal", "the model failed on this request"))
        self._release(len(culprits))
        self._keep([i not in culprits for i in range(len(self._active))])
        return bool(culprits)

    def _record(self, seq: _Sequence, row: RowResult) -> None:
        """Count the step; publish per `stream_every`, and the outcome after the last step."""
        seq.index += 1
        seq.forwards += row.queried
        spec = seq.handle.spec
        num_steps = spec.sampler.steps
        if spec.stream_every is not None:
            seq.unsent += tuple(Reveal(pos, token, p) for pos, token, p in row.reveals)
            seq.unsent += tuple(Remask(pos) for pos in row.remasked)  # disjoint from this step's reveals
            if row.ids is not None:
                t = 1 - seq.index / num_steps
                changed, remasked = net_changes(seq.unsent)
                self._publish(seq.handle, StepUpdate(seq.index, num_steps, t, tuple(row.ids), changed, remasked))
                seq.unsent = ()
        if seq.index == num_steps:
            assert row.ids is not None, "the last step always returns the tokens"
            seq.done = True
            elapsed = time.monotonic() - seq.handle.submitted
            self.stats.completed(elapsed, seq.forwards, spec.written)  # before the client hears: /metrics never lags
            self._publish(seq.handle, Finished(tuple(row.ids), num_steps, elapsed, seq.forwards))
            self._release()

    def _fail_active(self, failure: Failed, counter: str) -> None:
        unfinished = [seq for seq in self._active if not seq.done]  # finished ones were released
        for seq in unfinished:
            self.stats.count(counter)  # counters first: a client that got its answer sees it counted
            self._publish(seq.handle, failure)
        self._release(len(unfinished))
        self._keep([False] * len(self._active))

    def _publish(self, handle: RequestHandle, update: Update) -> None:
        """Deliver `update`; a failing receiver cancels its own request, never the engine."""
        try:
            handle.publish(update)
        except Exception:
            log.exception("publishing to request %d failed; cancelling it", handle.id, extra=_tags(handle))
            handle.cancel()


def _tags(handle: RequestHandle) -> dict[str, str | None]:
    """Log `extra` that ties a line to the request's id (logging_setup's filter keeps it)."""
    return {"request_id": handle.request_id}
