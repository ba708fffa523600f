"""The one exception the trainer turns into a clear one-line error (exit code 2) before training."""

from __future__ import annotations


class TrainingInputError(ValueError):
    """Bad input to a training run: a missing file, an unreachable hub id, an unusable tokenizer."""
