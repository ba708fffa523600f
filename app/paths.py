"""Where the packaged files live; import-light, so that config and `--help` need no torch."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "tinystories-default"
"""The model shipped inside the package: what serve, generate and the Docker image use by default."""


def cache_dir() -> Path:
    """Where storydiff keeps what it prepares once and reuses (a CPU forward's exported graph):
    $STORYDIFF_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/storydiff."""
    if explicit := os.environ.get("STORYDIFF_CACHE_DIR"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storydiff"


def looks_like_local_path(source: str) -> bool:
    """True for anything that can only be a path: existing, absolute, relative, home or deep."""
    return (
        Path(source).expanduser().exists()
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def model_name(source: str) -> str:
    """How the API and `generate --json` name a model: a local checkpoint by its directory's name (a
    server's paths are its own business), a hub id as it is."""
    if looks_like_local_path(source):
        return Path(source).expanduser().resolve().name
    return source
