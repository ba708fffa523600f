"""Shared fixtures: tiny random masked LMs with real tokenizers, built offline in temp dirs."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig

if TYPE_CHECKING:
    from model_training.config import TrainConfig

DATA_DIR = Path(__file__).parent / "data"
CASED_VOCAB_DIR = DATA_DIR / "tokenizers" / "distilbert-base-cased"
STORIES_DIR = DATA_DIR / "tinystories"
TINY_SEQ_LEN = 48


def tiny_distilbert(vocab_size: int, max_positions: int = 64, seed: int = 0) -> DistilBertForMaskedLM:
    """A 2-layer, 32-dim DistilBERT with random weights: fast, deterministic, architecture-real."""
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=vocab_size,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=max_positions,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return DistilBertForMaskedLM(config).eval()


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, for a server that a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_train_config(output: Path, *flags: str) -> TrainConfig:
    """tiny-test.yaml on the stories sample, writing into `output`, plus extra flags."""
    from model_training.cli import parse_config  # the trainer's extras only where a test trains

    stories = ["--dataset", str(STORIES_DIR / "train.txt"), "--valid", str(STORIES_DIR / "valid.txt")]
    return parse_config(["--config", "tiny-test", "--output", str(output), *stories, *flags])


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and a shared 2-core CI makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cased_tokenizer():
    """The real distilbert-base-cased WordPiece tokenizer (28,996 tokens)."""
    return AutoTokenizer.from_pretrained(str(CASED_VOCAB_DIR))


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, cased_tokenizer) -> Path:
    """A storydiff-format checkpoint dir: tiny random DistilBERT + tokenizer + diffusion_config."""
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    model = tiny_distilbert(len(cased_tokenizer))
    config = DiffusionConfig(seq_len=TINY_SEQ_LEN, trained_on="nothing: random weights for tests")
    save_checkpoint(directory, model, cased_tokenizer, config)
    return directory


@pytest.fixture(scope="session")
def reference_format_dir(tmp_path_factory, cased_tokenizer) -> Path:
    """A reference-format dir: plain save_pretrained of model and tokenizer, no diffusion_config."""
    directory = tmp_path_factory.mktemp("reference-format")
    tiny_distilbert(len(cased_tokenizer), max_positions=40, seed=1).save_pretrained(directory)
    cased_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def copy_of(tmp_path):
    """Copy a checkpoint dir into the test's tmp dir, to damage it safely."""

    def _copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target)
        return target

    return _copy
