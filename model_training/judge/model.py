"""The judge: a small GPT-2 decoder and its own byte-level BPE vocabulary, saved to and loaded from a folder.

Another family than the generator (left to right, not masked diffusion) with another vocabulary (byte-
level BPE, not WordPiece), so its scores do not reward the generator's own habits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from model_training.judge.config import JudgeConfig

END = "<|endoftext|>"
"""The one special token: it starts every scored story and separates the packed training stories."""
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "judge.json"


def normalize(text: str) -> str:
    """One line, single spaces: generated stories carry no line breaks, so neither does anything judged."""
    return " ".join(text.split())


def train_tokenizer(stories: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE vocabulary learned from `stories` (every byte is covered: no unknown token)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        (normalize(s) for s in stories), vocab_size=vocab_size, min_frequency=2, special_tokens=[END],
        show_progress=False,
    )  # fmt: skip
    return Tokenizer.from_str(bpe.to_str())


def build_model(cfg: JudgeConfig, vocab_size: int, end_id: int | None) -> GPT2LMHeadModel:
    """A fresh GPT-2 decoder shaped by `cfg`, its weights drawn from `cfg.seed`."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=end_id,
        eos_token_id=end_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


@dataclass
class Judge:
    """A trained judge: its decoder, its vocabulary and what training measured (`info`)."""

    model: GPT2LMHeadModel
    tokenizer: Tokenizer
    info: dict[str, Any]

    @property
    def end_id(self) -> int:
        end = self.tokenizer.token_to_id(END)
        assert end is not None, "every judge vocabulary holds the end token"
        return int(end)

    @property
    def context(self) -> int:
        return int(self.model.config.n_positions)

    def save(self, folder: Path) -> None:
        """Weights (safetensors), vocabulary and `judge.json` into `folder`, written last: a folder with a
        `judge.json` is complete."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        (folder / INFO_FILE).write_text(json.dumps(self.info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Judge:
        """The judge saved in `folder`, in eval mode on the CPU."""
        if not (folder / INFO_FILE).is_file():
            raise FileNotFoundError(f"no trained judge in {folder} (it has no {INFO_FILE})")
        model = GPT2LMHeadModel.from_pretrained(folder).eval()
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        return cls(model, tokenizer, json.loads((folder / INFO_FILE).read_text()))


def is_trained(folder: Path) -> bool:
    """True when `folder` holds a complete judge."""
    return (folder / INFO_FILE).is_file()
