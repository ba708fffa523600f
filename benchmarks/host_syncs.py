"""Host syncs per engine iteration over the sampler grid, with the shipped model on the CPU.

On a GPU every host-blocking op (`nonzero`, boolean-mask indexing, `item()`, `bool(tensor)`, a copy to
the host) waits for the device; the engine plans exactly one: its payload copy. This counts them on the
CPU (tests/support/host_syncs.py) in every `RunningBatch.advance` over every remasking x endings x
blocks x canvas (tests/support/sync_workloads.py), and at the shipped defaults.

    python benchmarks/host_syncs.py
    python benchmarks/host_syncs.py --device cuda --quick   # also CUDA's own count (set_sync_debug_mode)
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.text import end_token_ids
from app.engine.model_forward import CheckpointForward
from tests.support.sync_workloads import Config, grid, syncs_per_advance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--steps", type=int, default=6, help="steps per story in the grid")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda also counts CUDA's own syncs)")
    parser.add_argument("--quick", action="store_true", help="the shipped defaults and one row per remasking")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.model, device=args.device)
    # the PyTorch path a GPU runs (ONNX Runtime reads numpy); the grid's batches: 3 rows
    forward = CheckpointForward(ckpt, cpu_backend="eager", max_rows=3)
    forward.prepare()  # on a GPU: every planned shape captured before counting, as before /ready
    words = list(ckpt.tokenizer("Once upon a time there was a little cat")["input_ids"])[1:-1]
    ends = sorted(end_token_ids(ckpt.tokenizer))
    pad = int(ckpt.tokenizer.pad_token_id)
    defaults = Config(ckpt.config.sampler_settings, "prompt")
    configs = [defaults, *grid(args.steps)]
    if args.quick:
        configs = [defaults, *(c for c in configs[1:] if c.canvas == "edit" and not c.settings.block_length)][:5]
    name = Path(str(ckpt.source)).name
    print(f"host syncs per RunningBatch.advance (3 rows of 21/40/32 tokens; {name} on {device.type})")
    print(
        f"{'configuration':56} {'max':>4} {'mean':>6}"
        + (f" {'CUDA syncs (mean)':>18}" if device.type == "cuda" else "")
    )
    worst = 0
    for i, config in enumerate(configs):
        with warnings.catch_warnings(record=True) as cuda_syncs:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")  # a warning per synchronizing CUDA call
            events = syncs_per_advance(forward, config, words, ckpt.mask_id, pad, ends, device=device)
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        counts = [len(e) for e in events]
        label = "shipped defaults: " + config.label if i == 0 else config.label
        cuda = [w for w in cuda_syncs if "synchroniz" in str(w.message)]
        extra = f" {len(cuda) / len(counts):18.1f}" if device.type == "cuda" else ""
        print(f"{label:56} {max(counts):4d} {sum(counts) / len(counts):6.1f}{extra}")
        worst = max(worst, max(counts))
    print(f"worst: {worst} per advance over {len(configs)} configurations")


if __name__ == "__main__":
    main()
