"""Loading checkpoints: our format, the reference format, and clear errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch

from app.diffusion.checkpoint import CheckpointError, load_checkpoint, looks_like_local_path
from app.diffusion.devices import select_device, select_dtype
from tests.conftest import TINY_SEQ_LEN


def test_storydiff_checkpoint_round_trip(tiny_checkpoint_dir, cased_tokenizer):
    ckpt = load_checkpoint(tiny_checkpoint_dir, device="cpu")
    assert ckpt.config.seq_len == TINY_SEQ_LEN
    assert ckpt.mask_id == cased_tokenizer.mask_token_id
    assert ckpt.dtype == torch.float32 and ckpt.device.type == "cpu"
    assert not ckpt.model.training
    assert ckpt.max_positions == 64


def test_reference_format_loads_with_max_positions_as_length(reference_format_dir):
    ckpt = load_checkpoint(str(reference_format_dir), device="cpu")
    assert ckpt.config.seq_len == 40
    assert ckpt.config.sampler_settings.steps == 40


def test_dtype_override(tiny_checkpoint_dir):
    ckpt = load_checkpoint(tiny_checkpoint_dir, device="cpu", dtype="bfloat16")
    assert next(ckpt.model.parameters()).dtype == torch.bfloat16


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_directory_without_weights(copy_of, tiny_checkpoint_dir):
    damaged = copy_of(tiny_checkpoint_dir)
    (damaged / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(damaged)


def edit_json(path, **changes) -> None:
    """Overwrite some keys of a JSON file."""
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_tokenizer_without_mask_token(copy_of, tiny_checkpoint_dir):
    damaged = copy_of(tiny_checkpoint_dir)
    edit_json(damaged / "tokenizer_config.json", mask_token=None)
    (damaged / "tokenizer.json").unlink(missing_ok=True)
    special = damaged / "special_tokens_map.json"
    if special.exists():
        special.unlink()
    with pytest.raises(CheckpointError, match="no mask token"):
        load_checkpoint(damaged)


def test_seq_len_above_max_positions(copy_of, tiny_checkpoint_dir):
    damaged = copy_of(tiny_checkpoint_dir)
    edit_json(damaged / "diffusion_config.json", seq_len=10_000)
    with pytest.raises(CheckpointError, match="above the model's 64 positions"):
        load_checkpoint(damaged)


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"HF_HUB_OFFLINE.*STORYDIFF_MODEL|STORYDIFF_MODEL"):
        load_checkpoint("someone/not-a-real-model-xyz")


@pytest.mark.parametrize(
    "source, local",
    [
        ("distilbert-base-cased", False),
        ("org/model", False),
        ("./out", True),
        ("/abs/dir", True),
        ("a/b/c", True),
        ("~/models/x", True),
    ],
)
def test_local_paths_and_hub_ids_are_told_apart(source, local):
    assert looks_like_local_path(source) is local


def test_device_and_dtype_selection():
    assert select_device("cpu").type == "cpu"
    assert select_dtype(torch.device("cpu")) == torch.float32
    assert select_dtype(torch.device("cuda")) == torch.bfloat16
    assert select_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        select_dtype(torch.device("cpu"), "int3")
