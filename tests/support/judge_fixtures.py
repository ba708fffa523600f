"""A tiny autoregressive judge, trained once a session through its CLI on the tests' story sample."""

from __future__ import annotations

from pathlib import Path

import pytest

STORIES = Path(__file__).resolve().parents[1] / "data" / "tinystories"
TRAIN, VALID = STORIES / "train.txt", STORIES / "valid.txt"
TINY_JUDGE_FLAGS = [
    "--train", str(TRAIN), "--vocab-size", "400", "--n-embd", "48", "--n-layer", "2", "--n-head", "2",
    "--block-size", "64", "--steps", "160", "--batch-size", "16", "--warmup", "10", "--lr", "0.005",
    "--eval-every", "80", "--dropout", "0.1",
]  # fmt: skip
"""Seconds of training on one thread: enough to tell real stories from shuffled words."""


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny judge, trained by `python -m model_training.judge train`."""
    from model_training.judge.cli import main

    folder = tmp_path_factory.mktemp("tiny-judge")
    assert main(["train", *TINY_JUDGE_FLAGS, "--valid", str(VALID), "--dir", str(folder), "--quiet"]) == 0
    return folder
