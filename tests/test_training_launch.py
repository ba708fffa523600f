"""The trainer's command lines: --help, the `storydiff train` alias, and real `accelerate launch` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main as storydiff_main
from model_training.cli import build_parser, main
from model_training.config import PRESET_DIR, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).parent / "accelerate"


def test_help_documents_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ["config", *TrainConfig.model_fields]:
        assert f"--{name.replace('_', '-')}" in text


def test_storydiff_train_is_the_same_command(capsys) -> None:
    with pytest.raises(SystemExit):
        storydiff_main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--max-steps" in text
    assert text.startswith("usage: storydiff train") and "storydiff train --config" in text


def test_flags_override_the_config_file() -> None:
    from model_training.cli import parse_config

    cfg = parse_config(
        [
            "--config",
            "tiny-test",
            "--max-steps",
            "7",
            "--dim",
            "48",
            "--no-low-discrepancy",
            "--betas",
            "0.8",
            "0.9",
            "--resume",
        ]
    )
    assert (cfg.max_steps, cfg.dim, cfg.n_layers, cfg.betas, cfg.resume) == (7, 48, 2, (0.8, 0.9), "auto")
    assert build_parser().parse_args(["--max-grad-norm", "none"]).max_grad_norm is None


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_is_a_valid_config(preset: str) -> None:
    from model_training.cli import parse_config

    cfg = parse_config(["--config", preset])  # unknown keys or bad values fail here
    assert cfg.dataset and cfg.seq_len >= 8


def _launch(tmp_path: Path, *launch_args: str, env_extra: dict[str, str] | None = None) -> Path:
    output = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    cmd = [
        str(ACCELERATE),
        "launch",
        *launch_args,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "model_training",
        "--config",
        "tiny-test",
        "--output",
        str(output),
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--num-samples",
        "0",
        "--log-every",
        "2",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 4 steps" in done.stdout and "best: step 4" in done.stdout
    return output


def test_accelerate_launch_one_process(tmp_path: Path) -> None:
    output = _launch(tmp_path, "--num_processes", "1", "--cpu")
    training = json.loads((output / "final" / "diffusion_config.json").read_text())["training"]
    assert training["steps"] == 4 and training["tokens_seen"] == 4 * 8 * 64
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-2", "step-4"]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path: Path) -> None:
    """Data parallel over gloo: `--multi_gpu` with ACCELERATE_USE_CPU=1 starts torchrun on the CPU."""
    output = _launch(tmp_path, "--multi_gpu", "--num_processes", "2", env_extra={"ACCELERATE_USE_CPU": "1"})
    training = json.loads((output / "final" / "diffusion_config.json").read_text())["training"]
    assert training["global_batch"] == 16 and training["tokens_seen"] == 4 * 16 * 64
    assert "2 process(es)" in training["hardware"]
    state = output / "checkpoints" / "step-4"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
