"""The names of the CPU forwards (`--cpu-backend`), import-light so that settings and `--help` need no torch.

`auto` is the measured default on a CPU (docs/benchmarks.md, `benchmarks/cpu_speed.py`); any other
device runs the PyTorch forward whatever this says, so the GPU path does not change.
"""

from __future__ import annotations

from typing import Literal, get_args

CpuBackend = Literal["auto", "eager", "onnx", "onnx-int8", "openvino"]
"""eager: PyTorch fp32; onnx: ONNX Runtime over the exported encoder, fp32 (the same logits up to float
rounding); onnx-int8: the same graph with int8 weights (ONNX Runtime's dynamic quantization); openvino:
the onnx graph compiled by OpenVINO, fp32; auto: AUTO."""

AUTO: CpuBackend = "onnx"
"""What `auto` runs on a CPU when ONNX Runtime is installed (without it: eager, with a warning)."""

CPU_BACKENDS: tuple[str, ...] = get_args(CpuBackend)

EXTRA_HINT = "pip install 'storydiff[cpu]'"

OPENVINO_HINT = "pip install 'storydiff[openvino]'"
"""OpenVINO (about 180 MB) is an extra of its own, beside the cpu extra's ONNX Runtime that exports its graph."""

CPU_BACKEND_HELP = (
    "How a CPU runs the model: eager (PyTorch fp32), onnx (ONNX Runtime fp32, same stories), onnx-int8 "
    f"(int8 weights, faster, approximate), openvino (OpenVINO fp32: {OPENVINO_HINT}) or auto ({AUTO} when "
    f"ONNX Runtime is installed: {EXTRA_HINT}). The ONNX graph is prepared on the first start and cached. "
    "GPUs always run PyTorch."
)


KV_REFRESH_HELP = (
    "Approximate and off by default (0): reuse the keys and values of positions that did not change between "
    "forwards, with a full pass every K forwards (dKV-Cache); on the CPU a story takes a fraction of the "
    "time, but it is not the exact forward's story (speed and judged quality: docs/benchmarks.md). Runs "
    "PyTorch's layers, whatever --cpu-backend says; DistilBERT models only; 1 is the exact forward."
)


class MissingExtra(ImportError):
    """A CPU backend was asked for whose optional dependency is not installed; the message says how to add it."""


def missing_extra(backend: str, module: str) -> MissingExtra:
    """The one-line error for `backend` without `module`."""
    hint = OPENVINO_HINT if backend == "openvino" else EXTRA_HINT
    return MissingExtra(f"--cpu-backend {backend} needs {module}, which is not installed: {hint}")
