"""Logits only where they are needed.

The vocabulary projection is a large share of a small model's work at every position, but a
denoising step only reads logits at positions it may reveal. For architectures whose head we
know, run the encoder over the whole sequence and the head only at the queried positions;
any other `AutoModelForMaskedLM` falls back to the full forward.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

HeadFn = Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]


def _distilbert_head(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    hidden = model.activation(model.vocab_transform(hidden))
    return model.vocab_projector(model.vocab_layer_norm(hidden))


MLM_HEADS: dict[str, HeadFn] = {
    "distilbert": _distilbert_head,
    "bert": lambda model, hidden: model.cls(hidden),
    "roberta": lambda model, hidden: model.lm_head(hidden),
}


@torch.inference_mode()
def logits_at(
    model: PreTrainedModel,
    x: torch.Tensor,  # (B, L) token ids
    query: torch.Tensor,  # (B, L) bool: positions whose logits are wanted
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real position, 0 = batch padding
) -> torch.Tensor:
    """Float32 logits at the `query` positions, in row-major order: (N, V), N = query.sum()."""
    head = MLM_HEADS.get(model.config.model_type)
    if head is None:
        logits = model(input_ids=x, attention_mask=attention_mask).logits  # (B, L, V)
        return logits[query].float()
    hidden = model.base_model(input_ids=x, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
    return head(model, hidden[query]).float()  # (N, V)
