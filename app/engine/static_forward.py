"""A forward pass over the planned static shapes, each prepared once at warm-up (used by the engine only).

A small model's forward at batch 1 is dozens of short kernels, and on a GPU it is bound by launching
them rather than by arithmetic; replaying them as one CUDA graph removes the launches (unmeasured
here: docs/benchmarks.md names `scripts/gpu_engine_bench.sh` as the run that would measure it).
Graphs need fixed shapes, so every call is padded to a shape of the engine's `ShapePlan` (padding is
hidden by the attention mask; padded rows attend to one position so that no softmax is empty), and
`warm_up` prepares every planned shape before the server says it is ready. The vocabulary head then
runs eagerly at the queried positions only, as in `logits.py`. On a CPU the eager path (`logits_at`)
is faster: padding would only add work there.

How a shape is prepared (`Capture`):
- "cuda_graph" (GPUs): the eager encoder recorded as one `torch.cuda.CUDAGraph` per shape over static
  input buffers, as vLLM's model runner does per batch bucket. Chosen over `torch.compile(mode=
  "reduce-overhead")` without a GPU to measure on, for warm-up time and robustness: capturing a shape
  costs a few eager passes, where inductor compiles each static shape for seconds (a plan of 48-72
  shapes would not fit a one-minute warm-up); dynamo past its recompile limit (8 shapes by default)
  silently runs the rest uncompiled; and one graph per shape, its inputs copied in, is the whole
  mechanism, where cudagraph trees re-record on their own rules. What it gives up is inductor's kernel
  fusion. Both the warm-up time and the speed are unmeasured (docs/benchmarks.md).
- "compile": `torch.compile(dynamic=False)` per shape with any backend: `--compile` on a CPU
  (inductor), and the tests' proof, with a CPU backend, that nothing compiles after warm-up.
- "eager": the padded shapes with nothing prepared (tests of the padding alone).

A shape whose preparation fails (at warm-up, or if it ever happens later) runs eagerly from then on,
for that shape only, logged once with the reason; no request fails because of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from app.diffusion.logits import HEADS, at_query, attention_bias
from app.engine.shape_plan import Shape, ShapePlan

log = logging.getLogger(__name__)

Capture = Literal["cuda_graph", "compile", "eager"]
Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, W) token ids, attention_mask (B, W)) -> the encoder's states (B, W, D)."""

GRAPH_WARM_PASSES = 2  # eager passes before a capture, so lazy initialisation stays out of the graph


def supports_static_forward(model: PreTrainedModel) -> bool:
    """Whether the model's family has a known head to run apart from its encoder."""
    return model.config.model_type in HEADS


class CapturedGraph:
    """One shape's encoder pass as a CUDA graph: a call copies the inputs into the graph's own buffers,
    replays it, and returns its output buffer (overwritten by the next call: read it before)."""

    def __init__(self, encode: Encode, x: torch.Tensor, mask: torch.Tensor, pool: Any) -> None:
        self.x, self.mask = x.clone(), mask.clone()
        side, main = torch.cuda.Stream(x.device), torch.cuda.current_stream(x.device)  # type: ignore[no-untyped-call]
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARM_PASSES):
                encode(self.x, self.mask)
        main.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = encode(self.x, self.mask)  # (B, W, D)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.out


class StaticShapeForward:
    """A `BatchForward` over the planned shapes, each prepared (captured or compiled) once."""

    def __init__(
        self, model: PreTrainedModel, pad_id: int, plan: ShapePlan, capture: Capture, backend: str = "inductor"
    ) -> None:
        if not supports_static_forward(model):
            raise ValueError(f"no static forward for model type {model.config.model_type!r}")
        self.model, self.pad_id, self.plan, self.capture = model, pad_id, plan, capture
        self.head = HEADS[model.config.model_type]
        encoder = model.base_model

        def encode(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            bias = attention_bias(model, attention_mask)  # (B, 1, 1, L): no host check of the mask
            hidden: torch.Tensor = encoder(input_ids=x, attention_mask=bias).last_hidden_state
            return hidden  # (B, L, D)

        self._eager_encode: Encode = encode
        if capture == "compile":
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, len(plan))  # one graph per planned shape
            dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 2 * len(plan))
            compiled: Encode = torch.compile(encode, backend=backend, dynamic=False)
        pool = torch.cuda.graph_pool_handle() if capture == "cuda_graph" else None  # shared by every graph
        preparers: dict[Capture, Callable[[torch.Tensor, torch.Tensor], Encode]] = {
            "cuda_graph": lambda x, mask: CapturedGraph(encode, x, mask, pool),
            "compile": lambda x, mask: compiled,  # dynamo compiles the shape at its first call, just after
            "eager": lambda x, mask: encode,
        }
        self._runner_for = preparers[capture]
        self.prepared: dict[Shape, Encode] = {}  # shapes that hold a graph
        self.eager_shapes: dict[Shape, str] = {}  # shapes whose preparation failed -> why
        self.late_shapes: list[Shape] = []  # shapes first met after warm-up (the plan's warm-up missed them)
        self.warmed = False

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,  # (B, W) token ids
        query: torch.Tensor,  # (B, W) bool or (N,) flat indices into B * W (`at_query`)
        attention_mask: torch.Tensor | None = None,  # (B, W) 1 = real position
    ) -> torch.Tensor:
        """Float32 logits (N, V) at the `query` positions, row-major, from one pass at a planned shape."""
        rows, width = x.shape
        padded_rows, padded_width = self.plan.bucket(rows, width)
        x_padded = x.new_full((padded_rows, padded_width), self.pad_id)  # (Bp, Wp)
        x_padded[:rows, :width] = x
        mask = x.new_zeros((padded_rows, padded_width))  # (Bp, Wp)
        mask[:rows, :width] = 1 if attention_mask is None else attention_mask
        mask[rows:, 0] = 1  # padded rows attend to one position: no empty softmax, no NaN
        hidden = self._encoded(x_padded, mask)  # (Bp, Wp, D)
        return self.head(self.model, at_query(hidden[:rows, :width], query)).float()  # (N, V)

    def _encoded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's states (B, W, D) from the shape's graph, prepared on its first call; eager for a
        shape whose preparation or run failed once, logged once, and no request fails for it."""
        shape = (x.shape[0], x.shape[1])
        if shape in self.eager_shapes:
            return self._eager_encode(x, mask)
        try:
            runner = self.prepared.get(shape)
            if runner is None:
                runner = self._prepare(shape, x, mask)
            return runner(x, mask)
        except Exception as err:  # a compiler or capture failure must not fail the request
            self.prepared.pop(shape, None)
            self.eager_shapes[shape] = f"{type(err).__name__}: {err}"
            log.warning("preparing the forward for %d x %d failed (%s); that shape runs eagerly", *shape, err)
            return self._eager_encode(x, mask)

    def _prepare(self, shape: Shape, x: torch.Tensor, mask: torch.Tensor) -> Encode:
        if self.warmed:
            self.late_shapes.append(shape)
            log.warning("shape %d x %d was not prepared at warm-up; preparing it inside a request", *shape)
        runner = self.prepared[shape] = self._runner_for(x, mask)
        return runner

    def warm_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Prepare every planned shape now rather than in a client's request, logging each; `progress`
        hears (shapes done, shapes planned) before each. Returns the number of shapes."""
        device, shapes = next(self.model.parameters()).device, self.plan.shapes
        verb = {"cuda_graph": "capturing", "compile": "compiling", "eager": "running"}[self.capture]
        for done, (rows, width) in enumerate(shapes):
            if progress is not None:
                progress(done, len(shapes))
            log.info("%s %d/%d (rows %d, width %d) ...", verb, done + 1, len(shapes), rows, width)
            x = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
            self(x, torch.arange(rows, device=device) * width)  # each row's first position
        self.warmed = True
        return len(shapes)
