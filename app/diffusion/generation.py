"""Stories from a model outside the server: one batched `sample` for the CLI, evaluation and benchmarks.

The server's engine runs the same pure step (`plan_step`, `apply_step`) over its changing batch;
this is the fixed-batch loop around it, with the model's logits at queried positions only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.diffusion.canvas import Canvas
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.cpu_forward import QueriedForward, select_forward
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.sampling import Pinned, SamplerRows, Step, denoise, fixed_until, initial_tokens
from app.diffusion.story_length import EndTokens
from app.diffusion.text import end_token_ids, prompt_ids


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: SamplerSettings,
    seeds: Sequence[int],
    length: int,
    prefixes: Sequence[Sequence[int]] | None = None,
    pinned: Sequence[Pinned] | None = None,
    forward: QueriedForward | None = None,
) -> Iterator[tuple[int, Step]]:
    """Denoise one sequence per seed in one batch, as the server's engine does, yielding (steps done,
    step) after every step.

    Args:
        model: a masked LM in eval mode, on the device to run on.
        tokenizer: the model's tokenizer: its mask token, and the end tokens every `endings` rule needs.
        settings: the sampler settings of every row (a checkpoint's: `config.sampler_settings`).
        seeds: one per sequence; a seed gives the same sequence in any batch.
        length: tokens per sequence, prefix included.
        prefixes: fixed leading token ids per sequence (prompts); None: all masked.
        pinned: (position, token) pairs fixed per sequence besides its prefix (an ending, blanks' neighbours).
        forward: how the model runs (`cpu_forward.select_forward`); None: PyTorch's eager forward, as
            for a model in training, whose weights change between calls.
    """
    device = next(model.parameters()).device
    mask_id = int(tokenizer.mask_token_id)
    prefixes = prefixes if prefixes is not None else [()] * len(seeds)
    pinned = pinned if pinned is not None else [()] * len(seeds)
    x = torch.stack([initial_tokens(p, length, mask_id, device, q) for p, q in zip(prefixes, pinned, strict=True)])
    fixed = [fixed_until(p, q) for p, q in zip(prefixes, pinned, strict=True)]
    rows = SamplerRows.build([settings] * len(seeds), seeds, device, fixed)
    ends = story_ends(tokenizer, device)
    forward = forward or select_forward(model, "eager")
    for index, step in denoise(lambda x_t, query: forward(x_t, query), x, rows, mask_id, ends):
        yield int(index[0]), step


def story_ends(tokenizer: PreTrainedTokenizerBase, device: torch.device | str = "cpu") -> EndTokens | None:
    """The tokenizer's end tokens (`end_token_ids`) on `device`, PAD filling a story's tail; None without PAD."""
    if tokenizer.pad_token_id is None:
        return None
    return EndTokens.build(end_token_ids(tokenizer), int(tokenizer.pad_token_id), device)


def story_steps(
    ckpt: Checkpoint,
    settings: SamplerSettings,
    seed: int,
    prompt: str | None = None,
    length: int | None = None,
    forward: QueriedForward | None = None,
) -> Iterator[tuple[int, Step]]:
    """One story of `length` tokens (the checkpoint's default if None) after `prompt`, step by step;
    `forward` as in `sample`."""
    length = ckpt.config.length_for(length or None)
    if length > ckpt.max_positions:
        raise ValueError(f"length {length} is above the model's {ckpt.max_positions} positions")
    prefix = [prompt_ids(ckpt.tokenizer, prompt)]
    yield from sample(ckpt.model, ckpt.tokenizer, settings, [seed], length, prefix, forward=forward)


def canvas_steps(
    ckpt: Checkpoint, settings: SamplerSettings, seed: int, canvas: Canvas, forward: QueriedForward | None = None
) -> Iterator[tuple[int, Step]]:
    """One story written around the fixed text of `canvas` (`app.diffusion.canvas`), step by step."""
    prefix, pinned = [canvas.prefix], [canvas.pinned]
    yield from sample(ckpt.model, ckpt.tokenizer, settings, [seed], canvas.length, prefix, pinned, forward)
