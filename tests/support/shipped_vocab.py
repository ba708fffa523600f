"""A tiny random model on the shipped model's WordPiece (8,192 pieces: no "ë", no emoji, no CJK), for
the tests of text typed outside a story vocabulary."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig
from app.paths import DEFAULT_MODEL_DIR
from tests.conftest import TINY_SEQ_LEN, tiny_distilbert


@pytest.fixture(scope="module")
def shipped_tokenizer():
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def shipped_vocab_dir(tmp_path_factory, shipped_tokenizer):
    """A tiny random model on the shipped model's 8,192-piece WordPiece: no "ë", no emoji, no CJK."""
    directory = tmp_path_factory.mktemp("shipped-vocab")
    config = DiffusionConfig(seq_len=TINY_SEQ_LEN, trained_on="nothing: random weights for tests")
    save_checkpoint(directory, tiny_distilbert(len(shipped_tokenizer)), shipped_tokenizer, config)
    return directory
