"""Which forward the engine runs for a checkpoint: static shapes and CUDA graphs on a GPU, the CPU backend
(`cpu_forward.select_forward`: ONNX Runtime or PyTorch eager) elsewhere.

`compile` is the `--compile/--no-compile` setting: None (the default) captures CUDA graphs on CUDA
only, where a pass is launch-bound; on a CPU the unpadded pass of the CPU backend is faster than a
padded one (True there compiles with inductor). The shapes come from one `ShapePlan`, declared here
from the engine's batch limit and the model's positions, and are all prepared by `prepare` during
warm-up. A preparation that fails as a whole is logged and the engine serves eagerly instead of
refusing to start; one that fails for a shape runs that shape eagerly. The CPU backend's graph is
prepared in `prepare` too (during warm-up, off the event loop), or at the first call for a forward
that was never prepared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.cpu_backend import CpuBackend
from app.diffusion.cpu_forward import EagerForward, QueriedForward, select_forward
from app.engine.shape_plan import Shape, ShapePlan
from app.engine.static_forward import Capture, StaticShapeForward, supports_static_forward

log = logging.getLogger(__name__)


class CheckpointForward:
    """A `BatchForward` for a checkpoint's model; `name` and the shape lists say which path runs (GET /info)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        compile: bool | None = None,
        cpu_backend: CpuBackend = "auto",
        max_rows: int = 32,
        backend: str = "inductor",
    ) -> None:
        self._model, self._cpu_backend = checkpoint.model, cpu_backend
        # The unpadded forward, chosen by `select_forward`; a backend with a graph to prepare waits for `prepare`.
        self._eager: QueriedForward | None = EagerForward(checkpoint.model) if cpu_backend == "eager" else None
        on_gpu = checkpoint.device.type == "cuda"
        wanted = on_gpu if compile is None else compile
        self.plan = ShapePlan.of(max_rows, checkpoint.max_positions)
        self._static: StaticShapeForward | None = None
        self._name = ""  # the compiled forward's name
        self._failed: str | None = None  # why preparing the whole plan failed, if it did
        if wanted and not supports_static_forward(checkpoint.model):
            log.warning("no compiled forward for %s models; running eagerly", checkpoint.model.config.model_type)
        elif wanted:
            pad = checkpoint.tokenizer.pad_token_id
            pad_id = checkpoint.mask_id if pad is None else int(pad)
            capture: Capture = "cuda_graph" if on_gpu else "compile"
            self._static = StaticShapeForward(checkpoint.model, pad_id, self.plan, capture, backend)
            self._name = "compiled (CUDA graphs)" if on_gpu else "compiled"

    @property
    def name(self) -> str:
        """Which path runs, and how many planned shapes fell back to eager."""
        if self._static is None:
            return self._eager.name if self._eager is not None else f"{self._cpu_backend} (not prepared yet)"
        if not self._static.eager_shapes:
            return self._name
        return f"{self._name}; {len(self._static.eager_shapes)} of {len(self.plan)} shapes eager"

    @property
    def compiled_shapes(self) -> list[Shape]:
        """The planned shapes that hold a prepared graph, the largest first."""
        prepared = self._static.prepared if self._static is not None else {}
        return [shape for shape in self.plan.shapes if shape in prepared]

    @property
    def eager_shapes(self) -> dict[Shape, str]:
        """The planned shapes that run eagerly because preparing them failed, with the reason."""
        if self._failed is not None:
            return dict.fromkeys(self.plan.shapes, self._failed)
        return dict(self._static.eager_shapes) if self._static is not None else {}

    def __call__(self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self._static is not None:
            return self._static(x, query, attention_mask)
        return self._unpadded()(x, query, attention_mask)

    def _unpadded(self) -> QueriedForward:
        """The CPU backend's forward (PyTorch's on other devices), prepared at the first need."""
        if self._eager is None:
            self._eager = select_forward(self._model, self._cpu_backend)
        return self._eager

    def prepare(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Prepare the CPU backend, or compile or capture every planned shape now (during warm-up); fall
        back to eager if that fails."""
        if self._static is None:
            self._unpadded()
            return
        try:
            shapes = self._static.warm_up(progress)
            rows, widths = self.plan.rows, self.plan.widths
            log.info("forward prepared: %d shapes, rows %s x widths %s", shapes, rows, widths)
        except Exception as err:  # a compiler or capture failure must not keep the model from serving
            self._failed = f"{type(err).__name__}: {err}"
            log.warning("preparing the forward failed (%s); running eagerly", self._failed)
            self._static, self._eager = None, EagerForward(self._model, "eager (compile failed)")
