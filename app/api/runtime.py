"""What the lifespan owns: the checkpoint, loaded in a worker thread, and the engine that serves it.

Loading runs in the background so that the process answers /health at once and /ready turns 200
only when the model is loaded, warmed up and the engine thread runs (503 until then). A drain (the
server's first SIGTERM or Ctrl-C) turns /ready to 503 again at once and refuses new work, while the
requests already running get `shutdown_grace` seconds to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import anyio

from app.api.refusals import Refusals
from app.api.resumable import StreamRegistry
from app.api.schemas import ModelState
from app.config import Settings
from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.engine import Engine

log = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """The model is loading, failed to load or was stopped (nothing can be served now), or the server
    drains (no new work)."""

    def __init__(self, state: ModelState) -> None:
        super().__init__("the server is shutting down" if state == "draining" else f"the model is {state}")
        self.state = state


DRAIN_POLL_S = 0.05  # the engine's counters are read from the loop; 50 ms is nothing next to a grace
DRAIN_MESSAGE = "the server is shutting down; this is the story so far (draft)"


def _in_flight(engine: Engine) -> int:
    stats = engine.stats.snapshot()
    return stats.active + stats.waiting


@dataclass(frozen=True)
class Serving:
    """A loaded checkpoint, the engine that serves it, the settings it runs under, and its streams."""

    checkpoint: Checkpoint
    engine: Engine
    settings: Settings
    streams: StreamRegistry


class ModelRuntime:
    """Loads the checkpoint, starts and stops the engine; created by `create_app`, run by its lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: Serving | None = None  # set once, when the warmed-up engine runs; kept after stop
        self.error: str | None = None
        self._loader: asyncio.Task[None] | None = None
        self._settled: asyncio.Event | None = None
        self._stopped = False
        self._draining = False
        self.refusals = Refusals()  # requests refused in front of the engine, for /metrics
        self._engine_failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warming: Engine | None = None  # the engine while it warms up, for `detail`

    @property
    def ready(self) -> bool:
        """Serving: loaded, its engine running and not failed (the failure is set before the thread ends,
        so /ready turns 503 with the 500s it causes), and not draining."""
        loaded = self.loaded
        if loaded is None or self.error is not None or loaded.engine.failure is not None:
            return False
        return loaded.engine.running and not self._draining

    @property
    def state(self) -> ModelState:
        if self.error is not None or (self.loaded is not None and self.loaded.engine.failure is not None):
            return "failed"
        if self._stopped:
            return "stopped"
        if self._draining:
            return "draining"
        return "ready" if self.ready else "loading"

    @property
    def detail(self) -> str | None:
        """Why /ready says what it says: the error, or how far the warm-up has come ("warming up: 5/12 shapes")."""
        if self.error is not None or self._warming is None:
            return self.error
        return self._warming.warming

    def serving(self) -> Serving:
        """What requests are served with; raises ModelNotReady unless the engine runs."""
        if self.loaded is None or not self.loaded.engine.running:
            raise ModelNotReady(self.state)
        return self.loaded

    def admitting(self) -> Serving:
        """What new work is served with; raises ModelNotReady (503) unless the engine runs, and while
        draining, when only the requests already running are served (and resumed, and cancelled)."""
        if self._draining:
            raise ModelNotReady("draining")
        return self.serving()

    def start(self) -> None:
        """Begin loading in the background; returns at once."""
        self._settled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loader = self._loop.create_task(self._load(self._settled), name="storydiff-load")

    async def wait_settled(self) -> bool:
        """Wait until loading ended; True if the engine runs, False if loading failed."""
        assert self._settled is not None, "start() first"
        await self._settled.wait()
        return self.error is None

    async def _load(self, settled: asyncio.Event) -> None:
        settings = self.settings
        try:
            started = time.perf_counter()
            checkpoint = await anyio.to_thread.run_sync(
                load_checkpoint, settings.model, settings.device, settings.dtype
            )
            loaded_s = time.perf_counter() - started
            engine = Engine.from_checkpoint(
                checkpoint,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
                compile=settings.compile,
                cpu_backend=settings.cpu_backend,
                on_failure=self._engine_died,
            )
            engine.start()
            self._warming = engine
            try:
                warmup_s = await anyio.to_thread.run_sync(engine.warm_up)
            except BaseException:
                await anyio.to_thread.run_sync(engine.stop)
                raise
            finally:
                self._warming = None
            compiled, eager = engine.forward_shapes
            if compiled or eager:
                log.info("warm-up %.2fs: %d shapes compiled, %d eager", warmup_s, len(compiled), len(eager))
            self.loaded = Serving(checkpoint, engine, settings, StreamRegistry(settings.resume_grace_s))
            log.info(
                "ready: model %s on %s (%s, %s forward), %.1fM parameters, max length %d; loaded in %.1fs, "
                "warm-up %.2fs; max_batch %d, max_queue %d",
                checkpoint.source,
                checkpoint.device,
                str(checkpoint.dtype).removeprefix("torch."),
                engine.forward_name,
                checkpoint.num_parameters / 1e6,
                checkpoint.max_positions,
                loaded_s,
                warmup_s,
                settings.max_batch,
                settings.max_queue,
            )
        except Exception as err:  # a bad model dir must show on /ready and in the log, not kill the loop
            self.error = str(err) or type(err).__name__
            log.error("could not load the model %s: %s", settings.model, self.error)
        finally:
            settled.set()

    def _engine_died(self, reason: str) -> None:
        """On the engine thread, once it died: /ready turns 503 "failed", and `wait_engine_failed` returns."""
        self.error = f"the engine failed: {reason}"
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending anyway
                self._loop.call_soon_threadsafe(self._engine_failed.set)

    async def wait_engine_failed(self) -> str:
        """Wait until the engine thread dies (if it ever does); returns why."""
        await self._engine_failed.wait()
        return self.error or "the engine failed"

    async def drain(self) -> None:
        """Refuse new work at once, let running requests finish for `shutdown_grace` seconds, then end
        the streams still running with their draft (an `error` event), and stop the engine, which
        fails whatever else is left."""
        self._draining = True
        loaded = self.loaded
        if loaded is None:
            return
        engine, grace_s = loaded.engine, self.settings.shutdown_grace_s
        log.info("draining: %d requests running or queued get %gs to finish", _in_flight(engine), grace_s)
        deadline = time.monotonic() + grace_s
        while _in_flight(engine) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if unfinished := _in_flight(engine):
            ended = loaded.streams.fail_running(DRAIN_MESSAGE)
            log.warning("drained: %d requests unfinished; %d streams got their draft", unfinished, ended)
        await anyio.to_thread.run_sync(engine.stop, 0.0)

    async def stop(self) -> None:
        """Let in-flight requests finish for `shutdown_grace` seconds, fail the rest, stop the thread."""
        self._stopped = True
        if self._loader is not None and not self._loader.done():
            await asyncio.wait({self._loader})  # a thread cannot be cancelled; let the load end
        if self.loaded is not None:
            log.info("stopping the engine (grace %.1fs)", self.settings.shutdown_grace_s)
            await anyio.to_thread.run_sync(self.loaded.engine.stop, self.settings.shutdown_grace_s)
