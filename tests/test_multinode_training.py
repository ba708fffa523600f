"""Training over two machines, as deploy/kubernetes/training/train-multinode.yaml launches it: two
`accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1` of one process each,
on this host over loopback, sharing one output directory as the pods share one volume.

Machine 0 and machine 1 are ranks 0 and 1, exactly as the two processes of one machine are
(tests/test_distributed_training.py), so the run must reach the bound of one process at the same
global batch, within the same tolerance, and resume from its checkpoint to the same weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port
from tests.test_distributed_training import (
    ACCELERATE,
    CERTAIN_MASKS,
    CERTAIN_MASKS_TOLERANCE,
    COMMON,
    ROOT,
    train_one,
    training_record,
)

MACHINES = 2
LAUNCH_TIMEOUT_S = 600


def launch_machines(output: Path, *flags: str, tokenizer_of: Path | None = None) -> list[str]:
    """Machines 0 and 1 at batch 4 each (global batch 8), started together; each one's output."""
    if tokenizer_of is not None:  # WordPiece ties break differently run to run: one vocabulary for all
        shutil.copytree(tokenizer_of / "tokenizer", output / "tokenizer")
    launch = [str(ACCELERATE), "launch", "--multi_gpu", f"--num_machines={MACHINES}", f"--num_processes={MACHINES}"]
    launch += ["--main_process_ip=127.0.0.1", f"--main_process_port={free_port()}"]
    launch += ["--mixed_precision=no", "--dynamo_backend=no"]
    train = ["-m", "model_training", "--config", "tiny-test", "--output", str(output), "--batch-size", "4"]
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    machines = [
        subprocess.Popen(
            [*launch, f"--machine_rank={rank}", *train, *COMMON, *flags],
            cwd=ROOT,
            env=env | {"OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(MACHINES)
    ]
    try:
        outputs = [machine.communicate(timeout=LAUNCH_TIMEOUT_S)[0] for machine in machines]
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    for rank, (machine, log) in enumerate(zip(machines, outputs, strict=True)):
        assert machine.returncode == 0, f"machine {rank}:\n{log[-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory) -> Path:
    """Every position masked: 30 steps, evaluated every 10, saved every 15."""
    output = tmp_path_factory.mktemp("two-machines") / "run"
    launch_machines(output, *CERTAIN_MASKS)
    return output


@pytest.mark.slow
def test_two_machines_reach_the_bound_of_one_process(two_machines, tmp_path) -> None:
    training = training_record(two_machines)
    assert "2 process(es)" in training["hardware"] and training["global_batch"] == 8
    one = train_one(tmp_path / "one", *CERTAIN_MASKS, tokenizer_of=two_machines)
    two = training["val_nats_per_token"]
    assert abs(two - one.result.nats_per_token) < CERTAIN_MASKS_TOLERANCE, (two, one.result.nats_per_token)
    print(f"every position masked: 1 process {one.result.nats_per_token:.5f}, 2 machines {two:.5f} nats/position")
    assert one.result.nats_per_token < one.evaluations[0][1] - 0.1, "neither run trained"


@pytest.mark.slow
def test_a_two_machine_checkpoint_resumes_to_the_same_weights(two_machines, tmp_path) -> None:
    state = two_machines / "checkpoints" / "step-15"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    resumed = tmp_path / "resumed"
    logs = launch_machines(resumed, *CERTAIN_MASKS, "--resume", str(state), tokenizer_of=two_machines)
    assert "at step 15" in logs[0]
    assert training_record(resumed)["steps"] == 30
    straight = load_file(two_machines / "final" / "model.safetensors")
    again = load_file(resumed / "final" / "model.safetensors")
    assert straight.keys() == again.keys()
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=1e-5, atol=1e-6)
