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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.cpu_backend import CpuBackend
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.sampling import diffusion_time
from app.diffusion.text import end_token_ids
from app.engine.batch import RowResult, RunningBatch
from app.engine.fair_queue import FairQueue
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
from app.engine.step_cost import StepCostModel, Work

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
        self._waiting = FairQueue()  # guarded by _cond; round-robin across clients
        self._admitted = 0  # waiting + active; guarded by _cond
        self._accepting = False
        self._stopping = False
        self._active: list[_Sequence] = []  # engine thread only, in the order of the batch's rows
        self._batch = RunningBatch(mask_id, pad_id, self.device, end_ids)  # engine thread only
        self._end_ids = tuple(end_ids)
        self.typical_length = typical_length  # the width `warm_up` measures the forward's cost at
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the engine thread died, if it did
        self._on_failure = on_failure  # called on the engine thread when it dies
        self.warming: str | None = None  # what `warm_up` is doing now, for /ready's 503; None outside it
        self.warm_up_s: float | None = None  # how long the warm-up took, once it ended
        self.step_cost: StepCostModel | None = None  # measured from the first iteration after warm-up

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        compile: bool | None = None,
        on_failure: Callable[[str], None] | None = None,
        cpu_backend: CpuBackend = "auto",
    ) -> Engine:
        """An engine (not started) that serves `checkpoint`'s model on its device; `compile` and
        `cpu_backend` as in `CheckpointForward` (None: CUDA graphs on GPUs; on CPUs the backend)."""
        pad = checkpoint.tokenizer.pad_token_id
        return cls(
            CheckpointForward(checkpoint, compile, cpu_backend, max_rows=max_batch),
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
        """Prepare every planned shape of the forward (if it compiles), denoise one short sequence through
        the started engine, so that the first client pays for no lazy initialisation, then measure the
        forward's cost model; blocks, returns the seconds it took, raises RuntimeError if it failed.
        `warming` says which part runs meanwhile."""
        started = time.perf_counter()
        try:
            self._warm_up(length, timeout_s)
        finally:
            self.warming = None
        self.warm_up_s = time.perf_counter() - started
        return self.warm_up_s

    def _warm_up(self, length: int, timeout_s: float) -> None:
        length = min(length, self.typical_length)  # a model with fewer positions than the default
        self.warming = "warming up"
        if isinstance(self._forward, CheckpointForward):

            def progress(done: int, planned: int) -> None:
                self.warming = f"warming up: {done}/{planned} shapes"

            self._forward.prepare(progress)
        self.warming = "warming up: a first story"
        settings = SamplerSettings(steps=2, remasking=Remasking.LOW_CONFIDENCE)
        self._denoise([GenerationSpec((), length, settings, seed=0)], timeout_s)
        self.warming = "warming up: measuring the forward"
        self.forward_cost = ForwardCost.measure(
            self._forward, self.typical_length, self.mask_id, self.device, self.max_batch
        )
        # Steps that skip the model still cost the engine's own work over every position: measure some
        # at the typical length, at two batch sizes (a fixed part and a part per position), before the
        # first client, so that admission counts them from the start (app/engine/step_cost.py).
        for rows in (1, min(4, self.max_batch)):
            self._denoise([self._skipping_spec()] * rows, timeout_s)
        assert self.step_cost is not None
        cost = self.step_cost.snapshot()
        log.info(
            "forward cost: %.2f ms a pass + %.2f us a position; engine work %.2f ms an iteration + %.2f us a position",
            self.forward_cost.per_pass_s * 1e3,
            self.forward_cost.per_position_s * 1e6,
            cost.base_s * 1e3,
            cost.per_position_s * 1e6,
        )

    def _skipping_spec(self, written: int = 4) -> GenerationSpec:
        """A typical-length sequence with `written` positions to write in 8 times as many steps: mostly
        steps that skip the model. Its fixed prefix is any token that is no mask, pad or end."""
        length = self.typical_length
        special = {self.mask_id, self.pad_id, *self._end_ids}
        token = next(t for t in range(len(special) + 1) if t not in special)
        settings = SamplerSettings(steps=8 * written, remasking=Remasking.RANDOM)
        return GenerationSpec((token,) * (length - written), length, settings, seed=0)

    def _denoise(self, specs: list[GenerationSpec], timeout_s: float) -> None:
        """Submit `specs` together and wait for their ends; RuntimeError if one failed or took longer
        than `timeout_s`."""
        outcomes: list[Update] = []
        ended = threading.Semaphore(0)

        def publish(update: Update) -> None:
            if not isinstance(update, StepUpdate):
                outcomes.append(update)
                ended.release()

        for spec in specs:
            self.submit(spec, publish, timeout_s)
        deadline = time.monotonic() + timeout_s
        for _ in specs:
            if not ended.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise RuntimeError("warm-up failed: no answer")
        failed = [outcome for outcome in outcomes if isinstance(outcome, Failed)]
        if failed:
            raise RuntimeError(f"warm-up failed: {failed[0].message}")

    @property
    def forward_name(self) -> str:
        """Which forward runs: "eager", "compiled (CUDA graphs)", ... (for GET /info and the log)."""
        return self._forward.name if isinstance(self._forward, CheckpointForward) else "custom"

    @property
    def forward_shapes(self) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
        """The (rows, width) shapes that run compiled, and those that run eagerly with why (GET /info)."""
        if isinstance(self._forward, CheckpointForward):
            return self._forward.compiled_shapes, self._forward.eager_shapes
        return [], {}

    @property
    def forward_cost(self) -> ForwardCost:
        """The cost model that decides whether rows of different lengths share one padded pass."""
        return self._batch.cost

    @forward_cost.setter
    def forward_cost(self, cost: ForwardCost) -> None:
        self._batch.cost = cost  # read by the engine thread at its next iteration
        self.step_cost = StepCostModel(cost)  # iterations from now on are measured for admission

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
        self,
        spec: GenerationSpec,
        publish: Publish,
        timeout_s: float,
        request_id: str | None = None,
        client: str = "",
    ) -> RequestHandle:
        """Queue `spec`; raises QueueFull when every slot and queue place is taken. `request_id` tags
        the engine's log lines about it; `client` is whose turn it waits for in the fair queue."""
        with self._cond:
            if not self._accepting:
                raise EngineStopped("the engine is not running")
            if self._admitted >= self.max_batch + self.max_queue:
                self.stats.count("rejected")
                raise QueueFull(f"{self.max_batch} requests running and {self.max_queue} waiting")
            deadline = time.monotonic() + timeout_s
            handle = RequestHandle(spec, publish, deadline, request_id=request_id, client=client, _on_cancel=self._wake)
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

    def workload(self, extra: RequestHandle | None = None) -> list[Work]:
        """The admitted work, running rows first, then the queue in admission order (with `extra` where
        the fair queue would put it); what the admission estimate simulates. Any thread."""
        with self._cond:
            running = [seq for seq in self._active if not seq.done]
            order = self._waiting.order(extra)
        work = [Work.of(seq.handle, seq.index, seq.forwards, running=True) for seq in running]
        return work + [Work.of(handle, 0, 0, running=False) for handle in order]

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
            failure = Failed("internal", "the engine stopped working") if self.failure else SHUTDOWN
            self._fail_active(failure, "failed")
            with self._cond:
                self._accepting = False
                waiting, self._waiting = list(self._waiting), FairQueue()
            for handle in waiting:
                self.stats.count("failed")
                self._publish(handle, failure)
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
        rows = [h.spec for h in handles]
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
        started, clock = time.perf_counter(), [0.0, 0.0]  # forward seconds taken, and predicted
        forward = self._forward if self.step_cost is None else self._timed(clock)
        try:
            result = self._batch.advance(forward)
        except Exception:
            if not self._fail_culprits():
                raise  # no single request fails alone: the batch as a whole (e.g. out of memory)
            if not self._active:
                return
            result = self._batch.advance(forward)
        if self.step_cost is not None:
            positions = sum(seq.handle.spec.length for seq in self._active)
            self.step_cost.observe(positions, time.perf_counter() - started, clock[0], clock[1])
        for size in result.pass_sizes:
            self.stats.forward(size)
        for seq, row in zip(self._active, result.rows, strict=True):
            self._record(seq, row)
        self.stats.count("iterations")
        self._keep([not seq.done for seq in self._active])
        self.stats.occupancy(len(self._active), len(self._waiting))

    def _timed(self, clock: list[float]) -> BatchForward:
        """The forward, adding its seconds to clock[0] and what `ForwardCost` predicted to clock[1]."""
        cost = self.forward_cost

        def forward(x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
            started = time.perf_counter()
            try:
                return self._forward(x, query, attention_mask)
            finally:
                clock[0] += time.perf_counter() - started
                clock[1] += cost.of(x.shape[0], x.shape[1])

        return forward

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
                t = diffusion_time(seq.index, num_steps)
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
        unfinished = [(i, seq) for i, seq in enumerate(self._active) if not seq.done]  # finished: released
        for i, seq in unfinished:
            self.stats.count(counter)  # counters first: a client that got its answer sees it counted
            # On shutdown each story hands back its draft, as a timeout does.
            draft = tuple(self._batch.tokens(i)) if failure.reason == "shutdown" else failure.draft
            self._publish(seq.handle, Failed(failure.reason, failure.message, draft=draft))
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
