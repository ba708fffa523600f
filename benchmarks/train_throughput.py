"""Training throughput: tokens/s and peak memory of the masked-diffusion training step.

Runs the real objective and optimizer on random token batches shaped like a preset (no data
loading, no evaluation), after a warm-up, so that it measures the step alone. It times the training
step as model_training runs it (vocabulary head at masked positions only) against the baseline
that computes logits at every position, in the same run, and prints both and their ratio:

    python benchmarks/train_throughput.py --config tiny-test --steps 20
    python benchmarks/train_throughput.py --config scratch-tinystories --steps 5 --dim 192
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import AutoModelForMaskedLM

from app.diffusion.logits import logits_at_positions
from model_training.cli import parse_config
from model_training.modeling import FRESH_CONFIGS
from model_training.objective import diffusion_loss


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory if on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, rest = parser.parse_known_args()
    cfg = parse_config(rest)
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    model = AutoModelForMaskedLM.from_config(FRESH_CONFIGS[cfg.architecture](cfg, cfg.vocab_size, 0)).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    x0 = torch.randint(5, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=generator, device=device)
    mask_id = 4

    def step(head_only: bool) -> None:
        def logits_fn(x_t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
            return logits_at_positions(model, model, x_t, masked, head_only=head_only)

        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = diffusion_loss(logits_fn, x0, mask_id, generator, cfg.eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def tokens_per_second(head_only: bool) -> float:
        for _ in range(args.warmup):
            step(head_only)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(head_only)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * cfg.batch_size * cfg.seq_len / (time.perf_counter() - start)

    params = sum(p.numel() for p in model.parameters())
    print(
        f"{cfg.architecture} dim {cfg.dim} x {cfg.n_layers} layers, vocab {cfg.vocab_size}, "
        f"{params / 1e6:.2f}M params; "
        f"batch {cfg.batch_size} x {cfg.seq_len}, {cfg.mixed_precision} precision, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    full = tokens_per_second(head_only=False)
    print(f"  logits at every position (baseline): {full:,.0f} tokens/s")
    masked = tokens_per_second(head_only=True)
    print(f"  logits at masked positions only:     {masked:,.0f} tokens/s ({masked / full:.2f}x)")
    print(f"  peak memory {peak_memory_mib(device):,.0f} MiB")


if __name__ == "__main__":
    main()
