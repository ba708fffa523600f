"""`storydiff serve` as a real process (`python -m app`) on a free port, for tests that signal it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
LONG_LENGTH = 512


def save_long_checkpoint(directory: Path, tokenizer) -> Path:
    """A tiny model with 512 positions: long enough denoising to interrupt it mid-stream."""
    from tests.conftest import tiny_distilbert

    model = tiny_distilbert(len(tokenizer), max_positions=LONG_LENGTH)
    save_checkpoint(directory, model, tokenizer, DiffusionConfig(seq_len=LONG_LENGTH))
    return directory


def start_server(model_dir: Path, port: int, *flags: str, forward_delay_s: float = 0.0) -> subprocess.Popen:
    """`python -m app --model DIR --port PORT --threads 1 FLAGS`, its output (both streams) piped;
    with `forward_delay_s`, each model forward that much slower (tests/support/slow_serve.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    program = ["-m", "tests.support.slow_serve", str(forward_delay_s)] if forward_delay_s else ["-m", "app"]
    command = [sys.executable, *program, "--model", str(model_dir), "--port", str(port), "--threads", "1", *flags]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_ready(process: subprocess.Popen, url: str, timeout_s: float = 60.0) -> None:
    """Until GET /ready is 200; fails with the server's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the server never became ready"
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
