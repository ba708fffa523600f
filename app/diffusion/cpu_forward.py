"""The one place that picks how the model runs a forward: the engine, `storydiff generate`, evaluation
and the benchmarks all take their forward from `select_forward`.

On a CPU an eager PyTorch pass of this small model is bound by its matrix multiplications, which ONNX
Runtime's kernels run about twice as fast in fp32 and faster again with int8 weights (the measurements
are in docs/benchmarks.md). The encoder runs in ONNX Runtime (or OpenVINO, from the same exported
graph); the vocabulary head stays in PyTorch at the queried positions only, as in `logits.py`. Any
other device, and any model family without a known head, runs the PyTorch forward.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from transformers import PreTrainedModel

from app.diffusion.cpu_backend import AUTO, EXTRA_HINT, CpuBackend, missing_extra
from app.diffusion.logits import HEADS, at_query, logits_at
from app.paths import cache_dir

log = logging.getLogger(__name__)


class QueriedForward(Protocol):
    """(x (B, L), query, attention_mask (B, L) or None) -> float32 logits (N, V) at the queried positions,
    row-major (`logits.at_query`); `name` says which path runs (GET /info)."""

    name: str

    def __call__(
        self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class EagerForward:
    """PyTorch's own forward (`logits_at`), on any device."""

    def __init__(self, model: PreTrainedModel, name: str = "eager") -> None:
        self.model, self.name = model, name

    def __call__(
        self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return logits_at(self.model, x, query, attention_mask)


class GraphForward:
    """The encoder run by a runtime from the prepared graph (`encode`: the runtime's pass), the head in
    PyTorch at the queried positions."""

    def __init__(self, model: PreTrainedModel, name: str) -> None:
        self.model, self.name = model, name
        self.head = HEADS[model.config.model_type]

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's last hidden states (B, L, D) for its inputs, as an array of its own."""
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(
        self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = torch.ones_like(x) if attention_mask is None else attention_mask.to(torch.long)  # (B, L)
        hidden = self.encode({"input_ids": x.numpy(), "attention_mask": mask.numpy()})  # (B, L, D)
        states = torch.from_numpy(hidden).to(self.model.dtype)  # the graph is fp32; the head runs in the model's dtype
        return self.head(self.model, at_query(states, query)).float()  # (N, V)


class OnnxForward(GraphForward):
    """The encoder in ONNX Runtime from a prepared graph, the head in PyTorch at the queried positions."""

    def __init__(self, model: PreTrainedModel, graph: Path, name: str, threads: int | None = None) -> None:
        import onnxruntime

        super().__init__(model, name)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # no arena kept between passes: less resident memory
        # Between passes the sampler runs in PyTorch on the same cores: idle workers must not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (hidden,) = self.session.run(None, feeds)
        return cast(np.ndarray, hidden)


class OpenVinoForward(GraphForward):
    """The encoder compiled by OpenVINO from the prepared ONNX graph (fp32), the head in PyTorch at the
    queried positions."""

    def __init__(self, model: PreTrainedModel, graph: Path, name: str, threads: int | None = None) -> None:
        import openvino

        super().__init__(model, name)
        config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": "f32",  # not the bf16 a CPU with bf16 units would otherwise pick
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time: every core on it
        }
        self.request = openvino.Core().compile_model(str(graph), "CPU", config).create_infer_request()

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return cast(np.ndarray, self.request.infer(feeds)[0])  # a copy: the request reuses its buffers


def resolve(backend: CpuBackend) -> CpuBackend:
    """`auto` as the backend it stands for here: AUTO when ONNX Runtime is installed, else eager."""
    if backend != "auto":
        return backend
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("--cpu-backend auto: onnxruntime is not installed, so the CPU runs eagerly (%s)", EXTRA_HINT)
        return "eager"
    return AUTO


def select_forward(model: PreTrainedModel, backend: CpuBackend = "auto", cache: Path | None = None) -> QueriedForward:
    """The forward for `model` under `backend`: PyTorch's on every device but the CPU, else the backend's,
    its graph prepared now (and cached under `cache`, default `paths.cache_dir()`) if needed. Raises
    MissingExtra when an explicitly named backend's library is missing."""
    if next(model.parameters()).device.type != "cpu" or model.config.model_type not in HEADS:
        return EagerForward(model)
    chosen = resolve(backend)
    if chosen == "eager":
        return EagerForward(model)
    from app.diffusion.onnx_graph import prepared_graph  # imports onnxruntime: only where it runs

    if chosen == "openvino":
        for module in ("openvino", "onnxruntime"):  # ONNX Runtime's version keys the graph OpenVINO compiles
            try:
                importlib.import_module(module)
            except ImportError:
                raise missing_extra(chosen, module) from None
        return OpenVinoForward(model, prepared_graph(model, "onnx", cache or cache_dir()), "openvino (fp32)")
    graph = prepared_graph(model, chosen, cache or cache_dir())
    return OnnxForward(model, graph, f"{chosen} (onnxruntime)")
