"""Which forward the engine runs for a checkpoint: static shapes and CUDA graphs on a GPU, eager elsewhere.

`compile` is the `--compile/--no-compile` setting: None (the default) captures CUDA graphs on CUDA
only, where a pass is launch-bound; on a CPU the eager pass is faster than a padded one (True there
compiles with inductor). The shapes come from one `ShapePlan`, declared here from the engine's batch
limit and the model's positions, and are all prepared by `prepare` during warm-up. A preparation that
fails as a whole is logged and the engine serves eagerly instead of refusing to start; one that fails
for a shape runs that shape eagerly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.logits import logits_at
from app.engine.shape_plan import Shape, ShapePlan
from app.engine.static_forward import Capture, StaticShapeForward, supports_static_forward

log = logging.getLogger(__name__)


class CheckpointForward:
    """A `BatchForward` for a checkpoint's model; `name` and the shape lists say which path runs (GET /info)."""

    def __init__(
        self, checkpoint: Checkpoint, compile: bool | None = None, max_rows: int = 32, backend: str = "inductor"
    ) -> None:
        self._eager = functools.partial(logits_at, checkpoint.model)
        on_gpu = checkpoint.device.type == "cuda"
        wanted = on_gpu if compile is None else compile
        self.plan = ShapePlan.of(max_rows, checkpoint.max_positions)
        self._static: StaticShapeForward | None = None
        self._name = "eager"
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
        if self._static is None or not self._static.eager_shapes:
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
        return self._eager(x, query, attention_mask)

    def prepare(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Compile or capture every planned shape now (during warm-up); fall back to eager if that fails."""
        if self._static is None:
            return
        try:
            shapes = self._static.warm_up(progress)
            rows, widths = self.plan.rows, self.plan.widths
            log.info("forward prepared: %d shapes, rows %s x widths %s", shapes, rows, widths)
        except Exception as err:  # a compiler or capture failure must not keep the model from serving
            self._failed = f"{type(err).__name__}: {err}"
            log.warning("preparing the forward failed (%s); running eagerly", self._failed)
            self._static, self._name = None, "eager (compile failed)"
