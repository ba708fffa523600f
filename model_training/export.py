"""output/final and output/best: servable checkpoints (core `save_checkpoint` format) with model cards."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from pydantic import BaseModel
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.devices import DTYPES
from app.diffusion.diffusion_config import DiffusionConfig
from app.diffusion.sampler_settings import SamplerOverrides
from model_training.config import TrainConfig


def hardware(accelerator: Accelerator) -> str:
    """What the run trained on, in words: device kind and count, or the CPU."""
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    cpu = platform.processor() or platform.machine()
    return f"{accelerator.num_processes} process(es) on CPU ({cpu}, {torch.get_num_threads()} threads each)"


def gathered_model(accelerator: Accelerator, model: torch.nn.Module, save_dtype: str) -> PreTrainedModel:
    """A plain CPU copy of the trained weights; works under DDP, FSDP and DeepSpeed alike."""
    state = accelerator.get_state_dict(model)  # collective: every process must call it
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        return unwrapped
    copy = AutoModelForMaskedLM.from_config(unwrapped.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=False)
    copy.tie_weights()
    return copy.to(DTYPES[save_dtype]).eval()


def sampler_overrides(cfg: TrainConfig) -> BaseModel:
    """The sampler settings a trained checkpoint recommends (steps: one per token unless configured)."""
    given = {"remasking": "random", "temperature": cfg.sample_temperature, "top_p": cfg.sample_top_p}
    return SamplerOverrides.model_validate(given | ({"steps": cfg.sample_steps} if cfg.sample_steps else {}))


def diffusion_config(cfg: TrainConfig, source: str, training: dict[str, Any]) -> DiffusionConfig:
    """The checkpoint's sampler defaults and provenance."""
    return DiffusionConfig(
        seq_len=cfg.seq_len,
        sampler=sampler_overrides(cfg),
        trained_on=source,
        training=training,
    )


def model_card(
    cfg: TrainConfig, model: PreTrainedModel, source: str, training: dict[str, Any], samples: list[str]
) -> str:
    """A README.md for output/final: data, shape, steps, tokens, hardware, metrics and samples."""
    params = sum(p.numel() for p in model.parameters())
    story_lines = "\n\n".join(f"> {s.replace(chr(10), chr(10) + '> ')}" for s in samples) or "(none)"
    return f"""# storydiff masked-diffusion story model

- Base: {cfg.model or f"fresh {model.config.model_type}"} ({params / 1e6:.2f}M parameters, weights {cfg.save_dtype});
  tokenizer: {cfg.tokenizer or cfg.model or f"WordPiece, {training['vocab_size']} tokens, trained on the training stories"}.
- Data: {source}; {training["train_stories"]} training stories ({training["truncated_fraction"]:.1%} truncated),
  {training["valid_stories"]} validation stories; each story padded with [PAD] to {cfg.seq_len} tokens.
- Objective: masked diffusion (t ~ U({cfg.eps:g}, 1), mask with probability t, cross-entropy on masked
  positions weighted 1/t, mean over all positions incl. PAD).
- Training: {training["steps"]} steps, {training["tokens_seen"]:,} token positions seen; AdamW lr {cfg.lr:g},
  batch {training["global_batch"]} sequences, cosine with {cfg.warmup_ratio:.0%} warm-up, {cfg.mixed_precision} mixed precision;
  hardware: {training["hardware"]}; wall time {training["wall_seconds"]:.0f} s.

## Validation bound (lower is better)

| nats / position | bits / character |
| --- | --- |
| {training["val_nats_per_token"]:.4f} | {training["val_bits_per_char"]:.4f} |

Monte-Carlo ELBO over {training["valid_stories"]} stories, {cfg.eval_t_samples} stratified t per story, fixed seed.

## Samples (temperature {cfg.sample_temperature:g}, top-p {cfg.sample_top_p}, random remasking)

{story_lines}

## Use

`storydiff serve --model <this directory>` or `app.diffusion.checkpoint.load_checkpoint("<this directory>")`.
"""


def export_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    source: str,
    training: dict[str, Any],
    samples: list[str],
    name: str = "final",
) -> Path:
    """Write output/`name` with `save_checkpoint` plus README.md (main process); every process calls it.

    The directory is written beside its target and swapped in when complete, so a run killed while
    exporting leaves the previous export whole.
    """
    target = Path(cfg.output) / name
    copy = gathered_model(accelerator, model, cfg.save_dtype)
    if accelerator.is_main_process:
        tmp = target.with_name(f".tmp-{name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp, copy, tokenizer, diffusion_config(cfg, source, training))
        (tmp / "README.md").write_text(model_card(cfg, copy, source, training, samples))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    accelerator.wait_for_everyone()
    return target
