"""One story from a loaded checkpoint: the glue between prompt, sampler and model for one caller."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from app.diffusion.checkpoint import Checkpoint
from app.diffusion.logits import logits_at
from app.diffusion.sampler_settings import SamplerOverrides
from app.diffusion.sampling import SamplerConfig, Step, denoise, initial_tokens
from app.diffusion.text import prompt_ids


def sampler_from_defaults(ckpt: Checkpoint, **overrides: object) -> SamplerConfig:
    """The checkpoint's recommended sampler settings, with `overrides` (None values ignored)."""
    given = SamplerOverrides.model_validate({k: v for k, v in overrides.items() if v is not None})
    return ckpt.config.sampler_settings.override(given)


def story_steps(
    ckpt: Checkpoint, cfg: SamplerConfig, seed: int, prompt: str | None = None, length: int | None = None
) -> Iterator[Step]:
    """Denoise one story of `length` tokens (the checkpoint's default if None), yielding each step."""
    length = length or ckpt.config.seq_len
    if length > ckpt.max_positions:
        raise ValueError(f"length {length} is above the model's {ckpt.max_positions} positions")
    x = initial_tokens(prompt_ids(ckpt.tokenizer, prompt), length, ckpt.mask_id, ckpt.device)
    generator = torch.Generator(device=ckpt.device).manual_seed(seed)
    yield from denoise(
        lambda x_t, query: logits_at(ckpt.model, x_t, query), x.unsqueeze(0), cfg, ckpt.mask_id, generator
    )
