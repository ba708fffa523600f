"""scripts/train_default_gpu.sh: the script that trains the shipped default on a bare GPU machine.

It runs here on the CPU (ALLOW_CPU=1) with a tiny model, and what it hands back in OUT must rebuild
the best checkpoint byte for byte, within the device tool's limits (at most 8 files, each under 16 MB).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from app.diffusion.checkpoint import load_checkpoint
from tests.conftest import STORIES_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_default_gpu.sh"
TINY_FLAGS = (
    "--vocab-size 300 --dim 32 --n-layers 1 --n-heads 2 --hidden-dim 64 --seq-len 64 --batch-size 4 "
    "--max-steps 2 --eval-every 1 --max-valid-stories 4 --eval-batch-size 4 --eval-t-samples 1 "
    "--num-samples 1 --sample-steps 4 --mixed-precision no --dataloader-workers 0 --log-every 1 "
    "--save-every 100"
)


def gzipped_story_files(folder: Path) -> Path:
    """The three files the script expects, made from the tests' story sample."""
    folder.mkdir()
    train = (STORIES_DIR / "train.txt").read_text()
    half = len(train) // 2
    cut = train.index("<|endoftext|>", half) + len("<|endoftext|>")
    for name, text in [
        ("train.txt.gz", train[:cut]),
        ("train_extra_recased.txt.gz", train[cut:]),
        ("valid.txt.gz", (STORIES_DIR / "valid.txt").read_text()),
    ]:
        with gzip.open(folder / name, "wt") as f:
            f.write(text)
    return folder


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    python_bin = str(Path(sys.executable).parent)  # `python3` in the script is this interpreter
    full_env = {
        **os.environ,
        "PATH": python_bin + os.pathsep + os.environ["PATH"],
        "OUT": str(tmp_path / "out"),
        "RUN": str(tmp_path / "run"),
        "DATA": str(gzipped_story_files(tmp_path / "data")),
        "WHEELS": str(tmp_path / "no-wheels"),
        "PYARROW_WHEELS": str(tmp_path / "no-wheels"),
        **env,
    }
    (tmp_path / "out").mkdir()
    return subprocess.run(
        ["bash", str(SCRIPT)], check=False, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_hands_back_the_best_checkpoint_in_pieces_that_rebuild_it(tmp_path):
    done = run_script(tmp_path, ALLOW_CPU="1", TRAIN_ARGS=TINY_FLAGS, PART_SIZE="20K")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files), files
    parts = sorted(out.glob("model.safetensors.part-*"))
    assert len(parts) >= 2, files  # the weights were really split

    rebuilt = tmp_path / "back" / "best"
    with tarfile.open(out / "run-meta.tgz") as tar:
        names = tar.getnames()
        assert not any(n.endswith((".safetensors", ".bin", ".pkl")) for n in names), names
        tar.extractall(tmp_path / "back", filter="data")
    best = next(p for p in (tmp_path / "back").rglob("best") if p.is_dir())
    best.rename(rebuilt)
    (rebuilt / "model.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))

    original = (tmp_path / "run" / "best" / "model.safetensors").read_bytes()
    assert (rebuilt / "model.safetensors").read_bytes() == original
    assert hashlib.sha256(original).hexdigest() in (out / "best.sha256").read_text()
    ckpt = load_checkpoint(rebuilt, device="cpu")
    assert ckpt.config.training["steps"] in (1, 2)
    assert "torch" in (out / "env.txt").read_text()
    assert "model_training exited with 0" in done.stdout


def test_refuses_to_train_without_a_gpu_unless_told(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_script(tmp_path, TRAIN_ARGS=TINY_FLAGS)
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr
    assert not (tmp_path / "run").exists()  # stopped before any training
