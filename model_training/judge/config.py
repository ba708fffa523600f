"""JudgeConfig: every knob that decides the judge's weights, and where a judge with those knobs is cached.

The cache directory is named by a hash of the config and of the training files' bytes, so a changed
knob or data file trains a new judge instead of silently reusing an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tinystories"
"""The offline TinyStories copy beside the checkout (`../shared`), as the workplace and CI have it."""
DEFAULT_TRAIN = [str(SHARED_DATA / "train.txt.gz"), str(SHARED_DATA / "train_extra_recased.txt.gz")]
DEFAULT_VALID = [str(SHARED_DATA / "valid.txt.gz")]
CACHE_ENV = "STORYDIFF_JUDGE_DIR"
TRAINING_VERSION = 1
"""Bumped whenever a change to the training code changes the weights it makes: old caches are then unused."""


class JudgeConfig(BaseModel):
    """A judge's training run. Field descriptions double as `--help` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: list[str] = Field(
        DEFAULT_TRAIN,
        min_length=1,
        description="training stories: .txt[.gz] (<|endoftext|> between stories), .jsonl or .parquet files",
    )
    dev_fraction: float = Field(
        0.05, gt=0, lt=1, description="share of the training stories held back to choose the step"
    )
    vocab_size: int = Field(4096, ge=300, description="byte-level BPE vocabulary (256 bytes + merges + 1 special)")
    n_embd: int = Field(128, ge=8, description="hidden size")
    n_layer: int = Field(4, ge=1, description="decoder layers")
    n_head: int = Field(4, ge=1, description="attention heads")
    block_size: int = Field(512, ge=16, description="context in tokens; longer stories are scored on their start")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on embeddings, attention and residuals")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (cosine decay to zero)")
    warmup: int = Field(40, ge=0, description="linear warm-up steps")
    steps: int = Field(600, ge=1, description="optimizer steps")
    batch_size: int = Field(
        4, ge=1, description="windows of block_size tokens, cut at random from the packed stories, per step"
    )
    eval_every: int = Field(50, ge=1, description="steps between dev evaluations; the best one is kept")
    seed: int = Field(0, description="seeds the dev split, the initial weights, the windows and dropout")

    def digest(self) -> str:
        """Twelve hex digits naming this config and the bytes of its training files."""
        fields = self.model_dump(exclude={"train"}) | {"training_version": TRAINING_VERSION}
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        for path in self.train:
            h.update(hashlib.sha256(Path(path).expanduser().read_bytes()).digest())
        return h.hexdigest()[:12]


def cache_root() -> Path:
    """Where judges are cached: $STORYDIFF_JUDGE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/storydiff/judge."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storydiff" / "judge"


def cache_dir(cfg: JudgeConfig) -> Path:
    """The directory a judge trained with `cfg` lives in."""
    return cache_root() / cfg.digest()
