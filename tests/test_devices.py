"""MPS is never chosen: the sampler needs float64, which MPS lacks (app/diffusion/devices.py)."""

from __future__ import annotations

import pytest
import torch

from app.diffusion.devices import select_device, to_device


def test_a_mac_runs_on_its_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device().type == "cpu"
    assert select_device("auto").type == "cpu"


def test_asking_for_mps_says_why_not():
    with pytest.raises(ValueError, match="float64"):
        select_device("mps")


def test_a_host_tensor_goes_to_a_gpu_from_pinned_memory_without_waiting(monkeypatch):
    """A pageable host-to-GPU copy synchronises the stream; the engine's go from pinned memory, async."""
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pinned") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append((str(args[0]), kwargs)) or self)
    to_device(torch.arange(3), "cuda")
    assert calls == ["pinned", ("cuda", {"non_blocking": True})]
