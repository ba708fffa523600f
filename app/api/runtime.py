"""What the lifespan owns: the checkpoint, loaded in a worker thread, and the engine that serves it.

Loading runs in the background so that the process answers /health at once and /ready turns 200
only when the model is loaded, warmed up and the engine thread runs (503 until then).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import anyio

from app.config import Settings
from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.sampling import SamplerConfig
from app.engine import Engine, Failed, GenerationSpec, UpdateChannel

log = logging.getLogger(__name__)

WARMUP_LENGTH = 16


class ModelRuntime:
    """Loads the checkpoint, starts and stops the engine; created by `create_app`, run by its lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.checkpoint: Checkpoint | None = None
        self.engine: Engine | None = None
        self.error: str | None = None
        self._loader: asyncio.Task[None] | None = None
        self._settled: asyncio.Event | None = None
        self._stopped = False

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.running

    @property
    def state(self) -> str:
        """ready, loading, failed or stopped."""
        if self.error is not None:
            return "failed"
        if self._stopped:
            return "stopped"
        return "ready" if self.ready else "loading"

    def start(self) -> None:
        """Begin loading in the background; returns at once."""
        self._settled = asyncio.Event()
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="storydiff-load")

    async def wait_settled(self) -> bool:
        """Wait until loading ended; True if the engine runs, False if loading failed."""
        assert self._settled is not None, "start() first"
        await self._settled.wait()
        return self.error is None

    async def _load(self) -> None:
        assert self._settled is not None
        settings = self.settings
        try:
            started = time.perf_counter()
            checkpoint = await anyio.to_thread.run_sync(
                load_checkpoint, settings.model, settings.device, settings.dtype
            )
            loaded_s = time.perf_counter() - started
            engine = Engine(
                functools.partial(logits_at, checkpoint.model),
                mask_id=checkpoint.mask_id,
                pad_id=_pad_id(checkpoint),
                device=checkpoint.device,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
            )
            engine.start()
            try:
                warmup_s = await _warm_up(engine, checkpoint)
            except BaseException:
                await anyio.to_thread.run_sync(engine.stop)
                raise
            self.checkpoint, self.engine = checkpoint, engine
            log.info(
                "ready: model %s on %s (%s), %.1fM parameters, max length %d; loaded in %.1fs, "
                "warm-up %.2fs; max_batch %d, max_queue %d",
                checkpoint.source,
                checkpoint.device,
                str(checkpoint.dtype).removeprefix("torch."),
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
            self._settled.set()

    async def stop(self) -> None:
        """Let in-flight requests finish for `shutdown_grace` seconds, fail the rest, stop the thread."""
        self._stopped = True
        if self._loader is not None and not self._loader.done():
            await asyncio.wait({self._loader})  # a thread cannot be cancelled; let the load end
        if self.engine is not None:
            log.info("stopping the engine (grace %.1fs)", self.settings.shutdown_grace)
            await anyio.to_thread.run_sync(self.engine.stop, self.settings.shutdown_grace)


def _pad_id(checkpoint: Checkpoint) -> int:
    pad = checkpoint.tokenizer.pad_token_id
    return checkpoint.mask_id if pad is None else int(pad)


async def _warm_up(engine: Engine, checkpoint: Checkpoint) -> float:
    """Denoise one short sequence through the engine, so the first client does not pay for it."""
    started = time.perf_counter()
    length = min(WARMUP_LENGTH, checkpoint.max_positions)
    channel = UpdateChannel(asyncio.get_running_loop())
    spec = GenerationSpec((), length, SamplerConfig(steps=2, remasking="low_confidence"), seed=0)
    engine.submit(spec, channel.publish, timeout_s=600.0)
    outcome = await channel.outcome()
    if isinstance(outcome, Failed):
        raise RuntimeError(f"warm-up failed: {outcome.message}")
    return time.perf_counter() - started
