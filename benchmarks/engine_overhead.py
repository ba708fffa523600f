"""Engine overhead at a fixed number of active rows: iteration time minus forward time, with the real model.

`engine_throughput.py` runs whole stories; at 64 stories of 256 steps on a CPU that is many minutes.
The overhead is a per-iteration ratio, so this times a few iterations of the running batch at each
size instead: the batched step, the plan, the one host copy and the unpacking, against the forward
passes inside them (timed by a wrapper), for the shipped model at its default settings.

    python benchmarks/engine_overhead.py --rows 1,8,64 --iterations 12 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.cpu_backend import CPU_BACKENDS
from app.diffusion.text import end_token_ids
from app.engine.batch import NewRow, RunningBatch
from app.engine.model_forward import CheckpointForward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--rows", default="1,8,64", help="active rows, comma-separated")
    parser.add_argument("--iterations", type=int, default=12, help="timed iterations per size (after 3 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cpu-backend", choices=CPU_BACKENDS, default="eager", help="how the CPU runs the model (default eager)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model, device="cpu")
    forward = CheckpointForward(ckpt, cpu_backend=args.cpu_backend)
    spent = [0.0]

    def timed(x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        started = time.perf_counter()
        logits = forward(x, query, attention_mask)
        spent[0] += time.perf_counter() - started
        return logits

    settings, length = ckpt.config.sampler_settings, ckpt.config.seq_len
    model = Path(ckpt.source).name if Path(ckpt.source).is_dir() else ckpt.source  # no machine's path in a log
    print(
        f"cpu, {args.threads} threads; {model} at its defaults ({settings.remasking.value}, T {settings.steps}, "
        f"{settings.endings.value} endings)"
    )
    print(f"{'rows':>5} {'iter ms':>9} {'forward ms':>11} {'overhead ms':>12} {'overhead %':>11}")
    for rows in (int(n) for n in args.rows.split(",")):
        batch = RunningBatch(
            ckpt.mask_id, int(ckpt.tokenizer.pad_token_id), torch.device("cpu"), end_token_ids(ckpt.tokenizer)
        )
        batch.add([NewRow((), length, settings, seed, stream_every=1) for seed in range(rows)])
        with torch.inference_mode():
            for _ in range(3):
                batch.advance(timed)
            spent[0] = 0.0
            started = time.perf_counter()
            for _ in range(args.iterations):
                batch.advance(timed)
            total = time.perf_counter() - started
        iteration, model = total / args.iterations, spent[0] / args.iterations
        print(
            f"{rows:>5} {iteration * 1e3:>9.1f} {model * 1e3:>11.1f} {(iteration - model) * 1e3:>12.1f} "
            f"{(iteration - model) / iteration * 100:>10.1f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
