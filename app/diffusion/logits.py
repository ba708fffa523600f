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
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class MlmHead:
    """A model family's masked-LM head: the submodule that receives the encoder's states, and the whole
    head applied to them."""

    input_module: str
    apply: Callable[[Any, torch.Tensor], torch.Tensor]

    def __call__(self, model: Any, states: torch.Tensor) -> torch.Tensor:
        """The head on encoder states (N, D) -> logits (N, V)."""
        return self.apply(model, states)


HEADS: dict[str, MlmHead] = {
    "distilbert": MlmHead(
        "vocab_transform", lambda m, h: m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h))))
    ),
    "bert": MlmHead("cls", lambda m, h: m.cls(h)),
    "roberta": MlmHead("lm_head", lambda m, h: m.lm_head(h)),
}
"""Per model family, its masked-LM head: the one table that the hooked forward here and the static
forward (`StaticShapeForward`) read."""


def at_query(states: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The (N, ...) entries of `states` (B, L, ...) at `query`: a (B, L) bool mask, or (N,) flat indices
    into B * L, which gather without a host sync (a mask's N is read from the device)."""
    if query.dtype == torch.bool:
        return states[query]
    return states.flatten(0, 1).index_select(0, query)


def attention_bias(model: PreTrainedModel, attention_mask: torch.Tensor) -> torch.Tensor:
    """The (B, L) padding mask as the model's attention layers take it, (B, 1, 1, L): transformers passes
    a prepared 4D mask through untouched, where from a 2D one its SDPA path first asks the device whether
    any position is padded (`mask.all()`: a host sync on a GPU) to skip the mask."""
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if model.config._attn_implementation == "eager":  # an additive bias
        dtype = model.dtype
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
    return keep  # SDPA and flex attention take booleans: True attends


def logits_at_positions(
    forward: Callable[..., Any],
    model: PreTrainedModel,
    x: torch.Tensor,  # (B, L) token ids
    query: torch.Tensor,  # (B, L) bool or (N,) flat indices: positions whose logits are wanted (`at_query`)
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real position, 0 = batch padding
    head_only: bool = True,
) -> torch.Tensor:
    """Logits at the `query` positions in row-major order, (N, V).

    `forward` is `model` itself or a wrapper around it (DDP, accelerate); `model` is the bare masked
    LM whose head is hooked. `head_only=False` always takes the full-logits path (for wrappers that
    do not allow hooks inside, such as torch.compile).
    """
    head = HEADS.get(model.config.model_type) if head_only else None
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_bias(model, attention_mask)
    if head is None:
        logits: torch.Tensor = forward(input_ids=x, attention_mask=attention_mask).logits
        return at_query(logits, query)

    def keep_queried(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (at_query(args[0], query), *args[1:])  # hidden states (B, L, D) -> (N, D)

    handle = model.get_submodule(head.input_module).register_forward_pre_hook(keep_queried)
    try:
        queried: torch.Tensor = forward(input_ids=x, attention_mask=attention_mask).logits
        return queried
    finally:
        handle.remove()


@torch.inference_mode()
def logits_at(
    model: PreTrainedModel,
    x: torch.Tensor,  # (B, L) token ids
    query: torch.Tensor,  # (B, L) bool or (N,) flat indices: positions whose logits are wanted
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real position, 0 = batch padding
) -> torch.Tensor:
    """Float32 logits at the `query` positions for inference, in row-major order: (N, V)."""
    return logits_at_positions(model, model, x, query, attention_mask).float()
