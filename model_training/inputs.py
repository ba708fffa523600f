"""Everything a run reads before it trains: stories, tokenizer, model, tokenized splits.

Building these first means that bad input (a missing file, an unreachable hub id, a tokenizer
without [MASK], a sequence longer than the model allows) fails in seconds, before any training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from model_training.config import TrainConfig
from model_training.data import load_story_splits
from model_training.modeling import build_model, build_tokenizer
from model_training.tokenization import TokenizedSplit, tokenize_split

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """The model, its tokenizer and the tokenized training and validation stories."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train: TokenizedSplit
    valid: TokenizedSplit
    source: str

    @property
    def mask_id(self) -> int:
        return int(self.tokenizer.mask_token_id)


def build_inputs(cfg: TrainConfig, accelerator: Accelerator) -> RunInputs:
    """Load stories, build tokenizer and model, tokenize; the main process fills caches first."""
    with accelerator.main_process_first():
        splits = load_story_splits(cfg)
        tokenizer = build_tokenizer(cfg, lambda: iter(splits.train["text"]))
        model = build_model(cfg, tokenizer)
        train = tokenize_split(splits.train, tokenizer, cfg.seq_len, cfg.num_proc, "train")
        valid = tokenize_split(splits.valid, tokenizer, cfg.seq_len, cfg.num_proc, "valid")
    return RunInputs(model, tokenizer, train, valid, splits.source)
