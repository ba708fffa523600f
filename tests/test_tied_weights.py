"""Tied input and output embeddings survive every save: the served checkpoint and the resumable state.

Both are written without the "Removed shared tensor" warning and read back to the same logits, with
the output projection still the input embedding (so that fine-tuning one moves the other).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from app.diffusion.checkpoint import load_checkpoint, save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig
from model_training.checkpoints import Progress, load_state, save_state
from tests.conftest import tiny_distilbert


def tied(model: torch.nn.Module) -> bool:
    return model.vocab_projector.weight.data_ptr() == model.distilbert.embeddings.word_embeddings.weight.data_ptr()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_served_checkpoint_round_trip_is_exact_and_quiet(tmp_path: Path, cased_tokenizer, caplog) -> None:
    model = tiny_distilbert(len(cased_tokenizer))
    assert tied(model)
    ids = torch.randint(0, len(cased_tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        save_checkpoint(tmp_path / "ckpt", model, cased_tokenizer, DiffusionConfig(seq_len=32))
        loaded = load_checkpoint(tmp_path / "ckpt", device="cpu", dtype="float32")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert tied(loaded.model)
    assert torch.equal(logits(model, ids), logits(loaded.model, ids))


def test_resumable_state_round_trip_is_exact_and_quiet(
    tmp_path: Path, cased_tokenizer, caplog, fresh_accelerate_state
) -> None:
    accelerator = Accelerator(cpu=True)
    trained = accelerator.prepare(tiny_distilbert(len(cased_tokenizer), seed=1))
    ids = torch.randint(0, len(cased_tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        state_dir = save_state(accelerator, tmp_path, Progress(step=3), keep_last=1)
    assert not [r.getMessage() for r in caplog.records if "shared tensor" in r.getMessage()]

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    restored = accelerator.prepare(tiny_distilbert(len(cased_tokenizer), seed=2))  # other weights until loaded
    assert not torch.equal(logits(trained, ids), logits(restored, ids))
    with caplog.at_level(logging.WARNING):
        assert load_state(accelerator, state_dir).step == 3
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert tied(restored)
    assert torch.equal(logits(trained, ids), logits(restored, ids))
