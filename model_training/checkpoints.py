"""Resumable training state: `accelerator.save_state` into output/checkpoints/step-N, atomically.

A state is written into a hidden temp directory and renamed into place only when complete, so a
run killed while saving leaves the previous state intact and `--resume auto` never picks a torn one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import id_tensor_storage

from model_training.errors import TrainingInputError

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """Where a run is: optimizer steps done, token positions seen, wall time spent so far, and the
    lowest validation bound so far (nats per position) with its step, as exported to output/best."""

    step: int = 0
    tokens_seen: int = 0
    wall_seconds: float = 0.0
    best_nats: float | None = None
    best_step: int | None = None


def checkpoints_dir(output: Path) -> Path:
    return Path(output) / "checkpoints"


def complete_states(output: Path) -> list[Path]:
    """Complete saved states under `output`, oldest first."""
    root = checkpoints_dir(output)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output: Path) -> Path | None:
    """The state directory to resume from: None, the latest under output ('auto'), or a given path."""
    if not resume:
        return None
    if resume == "auto":
        states = complete_states(output)
        return states[-1] if states else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise TrainingInputError(f"--resume {resume!r} is not a saved training state (no {STATE_FILE})")
    return path


def save_state(accelerator: Accelerator, output: Path, progress: Progress, keep_last: int) -> Path:
    """Save model, optimizer, scheduler, RNG and progress as step-N; drop all but the last `keep_last`."""
    root = checkpoints_dir(output)
    final = root / f"step-{progress.step}"
    tmp = root / f".tmp-step-{progress.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(keep_one_name_per_tensor)
    try:
        accelerator.save_state(str(tmp))
    finally:
        hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(progress), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in complete_states(output)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def keep_one_name_per_tensor(models: list, weights: list[dict], output_dir: str) -> None:
    """Store each shared tensor once (tied input and output embeddings): safetensors cannot hold
    aliases, and `load_state` (safetensors' `load_model`) ties them again from the model itself.

    accelerate drops the aliases the same way, but warns "Removed shared tensor" on every save.
    """
    for state in weights:
        kept: set[tuple] = set()
        for name, tensor in list(state.items()):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = id_tensor_storage(tensor)
            if storage in kept:
                del state[name]
            kept.add(storage)


def load_state(accelerator: Accelerator, state_dir: Path) -> Progress:
    """Restore everything `save_state` wrote and return the progress it recorded."""
    accelerator.load_state(str(state_dir))
    return Progress(**json.loads((state_dir / STATE_FILE).read_text()))
