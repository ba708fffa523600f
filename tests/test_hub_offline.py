"""A hub id without a network: one line that says why, at once (no minute of retries), for serving a
model and for training on a hub dataset; HF_HUB_OFFLINE is named only where it is set."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

BOGUS_MODEL = "nobody-at-all/no-such-story-model"


def run_offline(args: list[str], tmp_path: Path, endpoint: str | None, offline: bool = False) -> tuple[int, str]:
    """`storydiff ARGS` with an empty Hugging Face cache and hub access allowed (unless `offline`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "PYTHONUNBUFFERED": "1"}
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,  # only against a hang; the retries this replaces took about a minute
    )
    return done.returncode, done.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("loading model")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "Retrying" not in stderr, stderr
    return lines[0]


def test_an_unreachable_hub_is_named_and_hf_hub_offline_is_not(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    code, stderr = run_offline(["generate", "--model", BOGUS_MODEL, "--no-live"], tmp_path, closed)
    line = one_error_line(stderr)
    assert code == 2
    assert line.startswith("storydiff generate: error: ") and BOGUS_MODEL in line
    assert f"cannot reach {closed.removeprefix('http://')}" in line
    assert "HF_HUB_OFFLINE" not in line and "--model" in line


def test_hf_hub_offline_is_named_where_it_is_set(tmp_path):
    code, stderr = run_offline(["generate", "--model", BOGUS_MODEL, "--no-live"], tmp_path, None, offline=True)
    line = one_error_line(stderr)
    assert code == 2 and "switched off (HF_HUB_OFFLINE is set)" in line and "unset HF_HUB_OFFLINE" in line


def _hub_resolves() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return True


@pytest.mark.skipif(_hub_resolves(), reason="this machine can reach huggingface.co")
def test_without_internet_the_real_hub_is_named(tmp_path):
    code, stderr = run_offline(["generate", "--model", BOGUS_MODEL, "--no-live"], tmp_path, None)
    line = one_error_line(stderr)
    assert code == 2 and "cannot reach huggingface.co" in line and "HF_HUB_OFFLINE" not in line


def test_a_preset_on_the_hub_dataset_says_how_to_train_on_local_files(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    code, stderr = run_offline(["train", "--config", "scratch-tinystories", "--output", "run"], tmp_path, closed)
    line = one_error_line(stderr)
    assert code == 2
    assert line.startswith("error: dataset 'roneneldan/TinyStories'") and "cannot reach" in line
    assert "--dataset FILE" in line and "--valid FILE" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
