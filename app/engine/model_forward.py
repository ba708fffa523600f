"""Which forward the engine runs for a checkpoint: static shapes and CUDA graphs on a GPU, eager elsewhere.

`compile` is the `--compile/--no-compile` setting: None (the default) compiles on CUDA only, where a
pass is launch-bound; on a CPU the eager pass is faster than a padded one. A compile or graph capture
that fails during warm-up is logged and the engine serves eagerly instead of refusing to start.
"""

from __future__ import annotations

import functools
import logging

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.logits import logits_at
from app.engine.static_forward import StaticShapeForward, supports_static_forward

log = logging.getLogger(__name__)


class CheckpointForward:
    """A `BatchForward` for a checkpoint's model; `name` says which path runs (shown by GET /info)."""

    def __init__(self, checkpoint: Checkpoint, compile: bool | None = None) -> None:
        self._eager = functools.partial(logits_at, checkpoint.model)
        wanted = checkpoint.device.type == "cuda" if compile is None else compile
        self._static: StaticShapeForward | None = None
        self._name = "eager"
        if wanted and not supports_static_forward(checkpoint.model):
            log.warning("no compiled forward for %s models; running eagerly", checkpoint.model.config.model_type)
        elif wanted:
            pad = checkpoint.tokenizer.pad_token_id
            pad_id = checkpoint.mask_id if pad is None else int(pad)
            self._static = StaticShapeForward(checkpoint.model, pad_id, checkpoint.max_positions, compile=True)
            self._name = "compiled (CUDA graphs)" if checkpoint.device.type == "cuda" else "compiled"

    @property
    def name(self) -> str:
        """Which path runs, naming the batch shapes (rows x width) that fell back to eager."""
        eager = sorted(self._static.eager_shapes) if self._static is not None else []
        if not eager:
            return self._name
        return f"{self._name}; eager for " + ", ".join(f"{rows}x{width}" for rows, width in eager)

    def __call__(self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self._static is not None:
            return self._static(x, query, attention_mask)
        return self._eager(x, query, attention_mask)

    def prepare(self, max_rows: int, width: int) -> None:
        """Compile and capture every batch bucket now (during warm-up); fall back to eager if that fails."""
        if self._static is None:
            return
        try:
            buckets = self._static.warm_up(max_rows, width)
            log.info("forward compiled: %d batch buckets up to %d rows at width %d", buckets, max_rows, width)
        except Exception as err:  # a compiler or capture failure must not keep the model from serving
            log.warning("compiling the forward failed (%s: %s); running eagerly", type(err).__name__, err)
            self._static, self._name = None, "eager (compile failed)"
