"""The repository's compose files, the dev tools that check them, and a clean environment to run them in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
BIN = Path(sys.executable).parent  # the venv's console scripts: storydiff, accelerate, hadolint, ...


def tool(name: str) -> str:
    """Path of a dev tool (from the `dev` extra), or skip where it is not installed."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less any STORYDIFF_*/HF_*/COMPOSE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYDIFF_", "HF_", "COMPOSE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def compose_config(*files: Path, profile: str | None = None, **env: str) -> dict:
    """The project as Docker Compose resolves it (validation, merging, interpolation included)."""
    # --env-file /dev/null: a developer's own .env must not change what is checked.
    command = [tool("docker-compose"), "--project-directory", str(ROOT), "--env-file", os.devnull]
    command += [arg for f in files for arg in ("-f", str(f))]
    command += ["--profile", profile] if profile else []
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
