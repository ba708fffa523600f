"""What `storydiff generate` can refuse before torch loads: a missing checkpoint, a device this machine
lacks, a length past the model's positions, a template without a blank. Each is one line, at once,
instead of after the seconds a model load takes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from app.diffusion.template import Blank, parse_template, prompt_template
from app.paths import looks_like_local_path

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
GPU_SIGNS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd", "/usr/lib/wsl/lib")
"""Files that show a CUDA (or ROCm, which torch also calls cuda) driver, without importing torch."""


def _model_problem(model: str) -> str | None:
    if not looks_like_local_path(model):
        return None  # a hub id: only the hub can say
    path = Path(model).expanduser()
    if not path.exists():
        return f"checkpoint directory {model!r} does not exist"
    if not (path / "config.json").is_file():
        return f"{model!r} has no config.json: it is not a saved model directory"
    return None


def _device_problem(device: str) -> str | None:
    if not DEVICE.fullmatch(device):
        return f"unknown device {device!r}: choose auto, cpu, cuda, cuda:N or mps"
    if device.startswith("cuda") and not (shutil.which("nvidia-smi") or any(map(Path.exists, map(Path, GPU_SIGNS)))):
        return f"device {device!r} was asked for, but this machine shows no CUDA GPU; try --device cpu"
    if device == "mps" and sys.platform != "darwin":
        return "device 'mps' is Apple's GPU, which only macOS has; try --device cpu"
    return None


def _max_positions(model: str) -> int | None:
    """The model's positions from its config.json, for a local checkpoint (None for a hub id)."""
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def _length_problem(args: argparse.Namespace) -> str | None:
    positions = _max_positions(args.model) if looks_like_local_path(args.model) else None
    if args.length is not None and positions is not None and args.length > positions:
        return f"--length {args.length} is above the model's {positions} positions"
    return None


def _template_problem(args: argparse.Namespace) -> str | None:
    if args.template is not None:
        if given := [f"--{name}" for name in ("prompt", "ending", "length") if getattr(args, name)]:
            return f"--template is the whole story: it takes no {', '.join(given)}"
        if not any(isinstance(segment, Blank) for segment in parse_template(args.template)):
            return "--template has no blank: write one as [___:N], N tokens for the model to write"
    elif prompt_template(args.prompt) is not None and args.length is not None:
        return "the --prompt's [___:N] blanks set the story's length: leave out --length"
    return None


def problem(args: argparse.Namespace) -> str | None:
    """The first reason `args` cannot run, found without torch; None when the model load may start."""
    for found in (_template_problem(args), _model_problem(args.model), _device_problem(args.device)):
        if found:
            return found
    return _length_problem(args)
