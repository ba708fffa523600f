"""Training scaled out for real on the CPU (DDP over gloo, two processes), and the shipped accelerate configs.

Two processes at batch 4 see, step by step, the same stories as one process at batch 8 (accelerate
shards one seeded permutation), and DDP averages their gradients; what differs is the masks, drawn
per process (seed, step, micro-batch, rank), and with them the gradient noise. How close the two
validation bounds can be, measured on this sample (model_training/accelerate/README.md):

- every position masked (`--eps 0.999`: t ~ U(0.999, 1), so every mask is certain; dropout is 0 in
  tiny-test): only t's last 0.1% is random, and the bounds agree to about 0.001 nats/position, while
  one process at batch 4 (what processes that never synchronise each train) is 0.03 away. Tolerance 0.005.
- the preset's own objective: run-to-run differences up to 0.04 nats/position after 100 steps (3 seeds,
  60 stories x 16 t samples, whose estimator alone has a 0.03 spread on one fixed model). Tolerance 0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from safetensors.torch import load_file

from app.diffusion.checkpoint import load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.text import decode_story
from model_training.config import PRESET_DIR
from model_training.loop import Summary, train
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIG_DIR = ROOT / "model_training" / "accelerate"
DDP_CPU = CONFIG_DIR / "ddp-cpu.yaml"
CERTAIN_MASKS = ("--eps", "0.999", "--max-steps", "30", "--eval-every", "10", "--save-every", "15")
PRESET_OBJECTIVE = ("--max-steps", "100", "--eval-every", "1000", "--save-every", "1000", "--eval-t-samples", "16")
COMMON = ("--num-samples", "0", "--log-every", "5", "--max-valid-stories", "60")
CERTAIN_MASKS_TOLERANCE = 0.005
PRESET_OBJECTIVE_TOLERANCE = 0.1


def launch_two(output: Path, *flags: str, tokenizer_of: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --config_file ddp-cpu.yaml`: two processes at batch 4 (global batch 8)."""
    if tokenizer_of is not None:  # WordPiece ties break differently run to run: one vocabulary for all
        shutil.copytree(tokenizer_of / "tokenizer", output / "tokenizer")
    command = [str(ACCELERATE), "launch", "--config_file", str(DDP_CPU), "-m", "model_training"]
    command += ["--config", "tiny-test", "--output", str(output), "--batch-size", "4", *COMMON, *flags]
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def train_one(output: Path, *flags: str, tokenizer_of: Path) -> Summary:
    """The same run in this process, alone, at batch 8."""
    shutil.copytree(tokenizer_of / "tokenizer", output / "tokenizer")
    try:
        return train(tiny_train_config(output, "--batch-size", "8", *COMMON, *flags))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def training_record(output: Path) -> dict:
    return json.loads((output / "final" / "diffusion_config.json").read_text())["training"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Two processes, every position masked: 30 steps, evaluated every 10, saved every 15."""
    output = tmp_path_factory.mktemp("ddp") / "run"
    return output, launch_two(output, *CERTAIN_MASKS)


@pytest.mark.slow
def test_two_processes_shard_the_batch_and_evaluate_each_story_once(two_processes) -> None:
    output, _ = two_processes
    training = training_record(output)
    assert "2 process(es)" in training["hardware"]
    assert training["global_batch"] == 8 and training["tokens_seen"] == 30 * 8 * 64
    assert training["valid_stories"] == 60, "gathered validation must drop the padding duplicates"
    state = output / "checkpoints" / "step-30"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()


@pytest.mark.slow
def test_two_processes_reach_the_bound_of_one_at_the_same_global_batch(two_processes, tmp_path) -> None:
    output, _ = two_processes
    one = train_one(tmp_path / "one", *CERTAIN_MASKS, tokenizer_of=output)
    two = training_record(output)["val_nats_per_token"]
    assert one.progress.step == 30 and one.progress.tokens_seen == 30 * 8 * 64
    assert abs(two - one.result.nats_per_token) < CERTAIN_MASKS_TOLERANCE, (two, one.result.nats_per_token)
    print(f"every position masked: 1 process {one.result.nats_per_token:.5f}, 2 processes {two:.5f} nats/position")
    # ... and a bound that moved: the check would be empty if neither run had trained.
    assert one.result.nats_per_token < one.evaluations[0][1] - 0.1


@pytest.mark.slow
def test_the_preset_objective_agrees_within_its_mask_noise(two_processes, tmp_path) -> None:
    tokenizer_of, _ = two_processes
    launch_two(tmp_path / "two", *PRESET_OBJECTIVE, tokenizer_of=tokenizer_of)
    two = training_record(tmp_path / "two")["val_nats_per_token"]
    one = train_one(tmp_path / "one", *PRESET_OBJECTIVE, tokenizer_of=tokenizer_of).result.nats_per_token
    assert abs(two - one) < PRESET_OBJECTIVE_TOLERANCE, (two, one)
    print(f"preset objective: 1 process {one:.5f}, 2 processes {two:.5f} nats/position")


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_to_the_same_weights(two_processes, tmp_path) -> None:
    output, _ = two_processes
    resumed = tmp_path / "resumed"
    done = launch_two(resumed, *CERTAIN_MASKS, "--resume", str(output / "checkpoints" / "step-15"), tokenizer_of=output)
    assert "at step 15" in done.stdout + done.stderr
    assert training_record(resumed)["steps"] == 30
    straight, again = (
        load_file(output / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert straight.keys() == again.keys()
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_export_one_servable_checkpoint(two_processes) -> None:
    output, _ = two_processes
    assert sorted(p.name for p in output.iterdir() if (p / "model.safetensors").is_file()) == ["best", "final"]
    checkpoint = load_checkpoint(output / "final", device="cpu")
    settings = SamplerSettings(steps=8, temperature=1.0)
    *_, (_, last) = sample(checkpoint.model, checkpoint.tokenizer, settings, [0], checkpoint.config.seq_len)
    assert not (last.x == checkpoint.mask_id).any()
    assert decode_story(last.x[0].tolist(), checkpoint.tokenizer).strip()


@pytest.mark.slow
def test_one_progress_bar_shows_the_validation_bound(two_processes) -> None:
    _, done = two_processes
    bars = done.stderr.replace("\r", "\n")
    shown = set(re.findall(r"val=(\d+\.\d{4})", bars))
    evaluated = set(re.findall(r"step \d+: val (\d+\.\d{4}) nats/position", done.stdout + done.stderr))
    assert shown and shown <= evaluated, (shown, evaluated)  # evaluations at steps 10 and 20 (30: after the bar)
    assert re.search(r"best=\d+\.\d{4}", bars)
    assert len(re.findall(r"training:\s+0%", bars)) == 1, "one bar: the main process's"


# --- the accelerate configs -------------------------------------------------------------------------

EXPECTED = {
    "ddp-cpu.yaml": DistributedType.MULTI_GPU,  # torchrun's launcher; ACCELERATE_USE_CPU=1 selects gloo
    "multi-gpu.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed-zero2.yaml": DistributedType.DEEPSPEED,
}


def validated_launch_args(path: Path):
    """The arguments `accelerate launch --config_file PATH` goes on with, after its own validation."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "model_training"])
    return _validate_launch_command(args)[0]


def test_the_documented_configs_are_the_shipped_ones() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)
    readme = (CONFIG_DIR / "README.md").read_text()
    assert all(name in readme for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_the_config_and_knows_every_key(name: str) -> None:
    path = CONFIG_DIR / name
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert config.distributed_type == EXPECTED[name] and config.num_processes >= 2
    # Nested keys accelerate would ignore silently: each must be an `accelerate launch` option.
    options = {action.dest for action in launch_command_parser()._actions}
    assert set(config.fsdp_config) | set(config.deepspeed_config) <= options
    args = validated_launch_args(path)
    assert args.num_processes == config.num_processes
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
        EXPECTED[name] == DistributedType.MULTI_GPU,
        EXPECTED[name] == DistributedType.FSDP,
        EXPECTED[name] == DistributedType.DEEPSPEED,
    )


def test_fsdp_config_wraps_the_presets_transformer_layers(cased_tokenizer) -> None:
    from model_training.modeling import build_model

    with mock.patch.dict(os.environ, prepare_multi_gpu_env(validated_launch_args(CONFIG_DIR / "fsdp.yaml"))):
        plugin = FullyShardedDataParallelPlugin()  # reads and checks what the launcher passes on
    assert plugin.fsdp_version == 2
    model = build_model(tiny_train_config(Path("unused")), cased_tokenizer)  # the presets' DistilBERT
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    assert policy is not None and sum(policy(module) for module in model.modules()) == 2  # n_layers


def test_deepspeed_config_matches_the_trainers_accumulation_and_clipping() -> None:
    from model_training.cli import parse_config

    deepspeed = load_config_from_file(str(CONFIG_DIR / "deepspeed-zero2.yaml")).deepspeed_config
    for preset in sorted(PRESET_DIR.glob("*.yaml")):
        cfg = parse_config(["--config", preset.stem])
        assert deepspeed["gradient_accumulation_steps"] == cfg.grad_accum, preset.name
        assert deepspeed["gradient_clipping"] == cfg.max_grad_norm, preset.name
