"""Which forward the engine runs for a checkpoint: static shapes and CUDA graphs on a GPU, the CPU backend
(`cpu_forward.select_forward`: ONNX Runtime or PyTorch eager) elsewhere.

`compile` is the `--compile/--no-compile` setting: None (the default) compiles on CUDA only, where a
pass is launch-bound; on a CPU the eager pass is faster than a padded one. A compile or graph capture
that fails during warm-up is logged and the engine serves eagerly instead of refusing to start. The
CPU backend's graph is prepared in `prepare` (during warm-up, off the event loop), or at the first
call for a forward that was never prepared.
"""

from __future__ import annotations

import logging

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.cpu_backend import CpuBackend
from app.diffusion.cpu_forward import EagerForward, QueriedForward, select_forward
from app.diffusion.static_forward import StaticShapeForward, supports_static_forward

log = logging.getLogger(__name__)


class CheckpointForward:
    """A `BatchForward` for a checkpoint's model; `name` says which path runs (shown by GET /info)."""

    def __init__(self, checkpoint: Checkpoint, compile: bool | None = None, cpu_backend: CpuBackend = "auto") -> None:
        self._model, self._cpu_backend = checkpoint.model, cpu_backend
        # The unpadded forward, chosen by `select_forward`; a backend with a graph to prepare waits for `prepare`.
        self._eager: QueriedForward | None = EagerForward(checkpoint.model) if cpu_backend == "eager" else None
        wanted = checkpoint.device.type == "cuda" if compile is None else compile
        self._static: StaticShapeForward | None = None
        self._name = ""  # the compiled forward's name
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
        if self._static is None:
            return self._eager.name if self._eager is not None else f"{self._cpu_backend} (not prepared yet)"
        eager = sorted(self._static.eager_shapes)
        if not eager:
            return self._name
        return f"{self._name}; eager for " + ", ".join(f"{rows}x{width}" for rows, width in eager)

    def __call__(self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self._static is not None:
            return self._static(x, query, attention_mask)
        return self._unpadded()(x, query, attention_mask)

    def _unpadded(self) -> QueriedForward:
        """The CPU backend's forward (PyTorch's on other devices), prepared at the first need."""
        if self._eager is None:
            self._eager = select_forward(self._model, self._cpu_backend)
        return self._eager

    def prepare(self, max_rows: int, width: int) -> None:
        """Prepare the CPU backend, or compile and capture every batch bucket now (during warm-up); a failed
        compile falls back to eager."""
        if self._static is None:
            self._unpadded()
            return
        try:
            buckets = self._static.warm_up(max_rows, width)
            log.info("forward compiled: %d batch buckets up to %d rows at width %d", buckets, max_rows, width)
        except Exception as err:  # a compiler or capture failure must not keep the model from serving
            log.warning("compiling the forward failed (%s: %s); running eagerly", type(err).__name__, err)
            self._static, self._eager = None, EagerForward(self._model, "eager (compile failed)")
