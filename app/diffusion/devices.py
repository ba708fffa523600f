"""Device and dtype choice: the fastest device present, bf16 on accelerators, fp32 on CPU.

Apple's MPS is not used: the sampler draws and sums in float64 (counter-based uniforms with 53 bits,
the inverse-CDF's cumulative sum over the vocabulary), and MPS has no float64. Until the sampler has
a float32 form whose draws are shown to stay correct, a Mac runs on its CPU.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


FLOAT64_DEVICES = ("cpu", "cuda")
"""Device types the sampler runs on: they have float64."""


def select_device(requested: str | None = None) -> torch.device:
    """`requested` if given ("cpu", "cuda", "cuda:1"), else cuda > cpu (never MPS: see the module's docstring)."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} was asked for, but CUDA is not available here")
        if device.type not in FLOAT64_DEVICES:
            raise ValueError(f"device {requested!r} has no float64, which the sampler needs; use cpu or cuda")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def select_dtype(device: torch.device, requested: str | torch.dtype | None = None) -> torch.dtype:
    """`requested` if given, else bf16 on GPUs (half the memory, tensor cores) and fp32 on CPU."""
    if isinstance(requested, torch.dtype):
        return requested
    if requested and requested != "auto":
        try:
            return DTYPES[requested.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {requested!r}; choose one of {sorted(DTYPES)}") from None
    return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host tensor `t` on `device` without waiting for the work queued there: a copy from pageable memory
    synchronises a CUDA stream, one from pinned memory runs asynchronously in stream order."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
