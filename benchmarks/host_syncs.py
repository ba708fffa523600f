"""Host syncs per engine iteration over the sampler grid, with the shipped model on the CPU.

On a GPU every host-blocking op (`nonzero`, boolean-mask indexing, `item()`, `bool(tensor)`, a copy to
the host) waits for the device; the engine plans exactly one: its payload copy. This counts them on the
CPU (tests/support/host_syncs.py) in every `RunningBatch.advance` over every remasking x endings x
blocks x canvas (tests/support/sync_workloads.py), and at the shipped defaults.

    python benchmarks/host_syncs.py
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.model, device="cpu")
    forward = CheckpointForward(ckpt)
    words = list(ckpt.tokenizer("Once upon a time there was a little cat")["input_ids"])[1:-1]
    ends = sorted(end_token_ids(ckpt.tokenizer))
    pad = int(ckpt.tokenizer.pad_token_id)
    defaults = Config(ckpt.config.sampler_settings, "prompt")
    configs = [defaults, *grid(args.steps)]
    print(f"host syncs per RunningBatch.advance (3 rows of 21/40/32 tokens; {Path(str(ckpt.source)).name})")
    print(f"{'configuration':56} {'max':>4} {'mean':>6}")
    worst = 0
    for i, config in enumerate(configs):
        counts = [len(events) for events in syncs_per_advance(forward, config, words, ckpt.mask_id, pad, ends)]
        label = "shipped defaults: " + config.label if i == 0 else config.label
        print(f"{label:56} {max(counts):4d} {sum(counts) / len(counts):6.1f}")
        worst = max(worst, max(counts))
    print(f"worst: {worst} per advance over {len(configs)} configurations")


if __name__ == "__main__":
    main()
