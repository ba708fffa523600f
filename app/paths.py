"""Where the packaged files live; import-light, so that config and `--help` need no torch."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "tinystories-default"
"""The model shipped inside the package: what serve, generate and the Docker image use by default."""
