"""MPS is never chosen: the sampler needs float64, which MPS lacks (app/diffusion/devices.py)."""

from __future__ import annotations

import pytest
import torch

from app.diffusion.devices import select_device


def test_a_mac_runs_on_its_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device().type == "cpu"
    assert select_device("auto").type == "cpu"


def test_asking_for_mps_says_why_not():
    with pytest.raises(ValueError, match="float64"):
        select_device("mps")
