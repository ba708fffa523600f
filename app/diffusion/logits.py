"""Logits only where they are needed.

The vocabulary projection is a large share of a small model's work at every position, but a
denoising step only reads logits at positions it may reveal, and the training loss only at masked
ones. For architectures whose head we know, a forward pre-hook on the head's first module keeps
only the queried positions' hidden states, so the head runs on those alone; the encoder still
sees the whole sequence. Going through the model's own forward keeps wrappers working (accelerate's
autocast, DistributedDataParallel). Any other `AutoModelForMaskedLM` computes full logits and
indexes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

HEAD_INPUT_MODULES: dict[str, str] = {
    "distilbert": "vocab_transform",
    "bert": "cls",
    "roberta": "lm_head",
}
"""Per model family, the submodule of the masked-LM head that receives the encoder's (B, L, D) states."""


def logits_at_positions(
    forward: Callable[..., Any],
    model: PreTrainedModel,
    x: torch.Tensor,  # (B, L) token ids
    query: torch.Tensor,  # (B, L) bool: positions whose logits are wanted
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real position, 0 = batch padding
    head_only: bool = True,
) -> torch.Tensor:
    """Logits at the `query` positions in row-major order, (N, V) with N = query.sum().

    `forward` is `model` itself or a wrapper around it (DDP, accelerate); `model` is the bare masked
    LM whose head is hooked. `head_only=False` always takes the full-logits path (for wrappers that
    do not allow hooks inside, such as torch.compile).
    """
    name = HEAD_INPUT_MODULES.get(model.config.model_type) if head_only else None
    if name is None:
        logits: torch.Tensor = forward(input_ids=x, attention_mask=attention_mask).logits
        return logits[query]

    def keep_queried(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][query], *args[1:])  # hidden states (B, L, D) -> (N, D)

    handle = model.get_submodule(name).register_forward_pre_hook(keep_queried)
    try:
        queried: torch.Tensor = forward(input_ids=x, attention_mask=attention_mask).logits
        return queried
    finally:
        handle.remove()


@torch.inference_mode()
def logits_at(
    model: PreTrainedModel,
    x: torch.Tensor,  # (B, L) token ids
    query: torch.Tensor,  # (B, L) bool: positions whose logits are wanted
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real position, 0 = batch padding
) -> torch.Tensor:
    """Float32 logits at the `query` positions for inference, in row-major order: (N, V)."""
    return logits_at_positions(model, model, x, query, attention_mask).float()
