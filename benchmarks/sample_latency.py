"""Time one story at a time with a checkpoint's default sampler settings, in float32 and bfloat16.

Prints each story's wall time and forward passes (the first story of each dtype is a warm-up and is
left out of the median), then the bfloat16 / float32 ratio of the medians, both measured in this run.

    python benchmarks/sample_latency.py --device cuda
    python benchmarks/sample_latency.py --device cpu --dtypes float32 --stories 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.cpu_backend import CPU_BACKEND_HELP, CPU_BACKENDS, CpuBackend
from app.diffusion.cpu_forward import select_forward
from app.diffusion.generation import story_steps
from app.diffusion.text import decode_story


def story_seconds(model: str, device: str, dtype: str, stories: int, backend: CpuBackend = "auto") -> list[float]:
    """Wall seconds of `stories` stories (seeds 1..N), one at a time, printing each."""
    ckpt = load_checkpoint(model, device=device, dtype=dtype)
    forward = select_forward(ckpt.model, backend)  # the server's forward
    cfg = ckpt.config.sampler_settings
    sync = torch.cuda.synchronize if ckpt.device.type == "cuda" else (lambda: None)
    times = []
    for seed in range(1, stories + 1):
        sync()
        start, calls = time.perf_counter(), 0
        for _, step in story_steps(ckpt, cfg, seed, forward=forward):
            x, calls = step.x, calls + step.model_called
        sync()
        times.append(time.perf_counter() - start)
        words = len(decode_story(x[0].tolist(), ckpt.tokenizer).split())
        print(f"{dtype:<9} seed {seed}: {times[-1]:7.3f} s, {calls} forward passes, {words} words", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--stories", type=int, default=4, help="stories per dtype, the first a warm-up")
    parser.add_argument("--cpu-backend", choices=CPU_BACKENDS, default="auto", help=CPU_BACKEND_HELP)
    args = parser.parse_args()
    medians = {}
    for dtype in args.dtypes:
        times = story_seconds(args.model, args.device, dtype, args.stories, args.cpu_backend)
        medians[dtype] = statistics.median(times[1:] or times)
        print(f"{dtype:<9} median {medians[dtype]:.3f} s a story (warm-up left out)")
    if {"float32", "bfloat16"} <= medians.keys():
        print(f"bfloat16 / float32: {medians['bfloat16'] / medians['float32']:.2f}x the time")


if __name__ == "__main__":
    main()
