"""Forwards that skip the positions that did not change: keys and values reused across denoising steps.

A masked-diffusion model's encoder is bidirectional, so every position's keys and values change a
little whenever any token does; but a position whose token did not change changes little between
steps. As dKV-Cache (Ma et al. 2025) and Fast-dLLM's DualCache (Wu et al. 2025) do, `ReusingForward`
runs a full pass every `refresh` calls and keeps each layer's keys and values; the calls between run
the encoder only at the *active* positions (queried, or changed since the previous call), attending
over the kept keys and values of all the others (written words and masks alike), whose hidden states
are not computed at all. A written token's keys and values are computed with it in place on the call
after it is written (dKV-Cache's delayed caching) and reused from then on. The result is an
approximation (a stable position's keys lag the context by up to `refresh - 1` calls); `refresh=1` is
a full pass every call, the exact forward.

It keeps state between calls, so it serves one fixed batch denoised from start to end (`sample()`:
`storydiff generate --kv-refresh`, the benchmarks); make one per batch. A call whose batch has a new
shape, or more masked positions in some row than the previous call's (a new batch), runs a full pass.
The engine, whose batch gains and loses rows every step, does not use it. DistilBERT only (the shipped
family); other families raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from app.diffusion.logits import HEADS, at_query

SUPPORTED = ("distilbert",)
"""Model families whose encoder `ReusingForward` runs layer by layer."""


@dataclass
class _Kept:
    """What the calls left: the tokens the last one saw and every layer's keys and values."""

    x: torch.Tensor  # (B, L) token ids at the last call
    keys: list[torch.Tensor]  # per layer (B, H, L, d)
    values: list[torch.Tensor]  # per layer (B, H, L, d)


class ReusingForward:
    """A `QueriedForward` that reuses keys and values across the calls of one fixed batch: a full pass
    every `refresh` calls, between them only the positions queried or changed since the previous call."""

    def __init__(self, model: PreTrainedModel, mask_id: int, refresh: int) -> None:
        if model.config.model_type not in SUPPORTED:
            raise ValueError(f"key/value reuse runs {', '.join(SUPPORTED)} models, not {model.config.model_type}")
        if refresh < 1:
            raise ValueError(f"refresh must be at least 1 (a full pass every call), got {refresh}")
        self.model, self.mask_id, self.refresh = model, mask_id, refresh
        self.name = f"eager, keys and values reused (full pass every {refresh})"
        self.head = HEADS[model.config.model_type]
        self._since_full = 0  # calls since the last full pass, that one included
        self.positions_run = 0  # positions the encoder computed, over all calls: what reuse saved
        self.positions_seen = 0  # positions of every call's batch
        self._kept: _Kept | None = None

    @torch.inference_mode()
    def __call__(
        self, x: torch.Tensor, query: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("key/value reuse serves one unpadded batch (sample()), not padded rows")
        wanted = query if query.dtype == torch.bool else _as_mask(query, x.shape)  # (B, L)
        full = self._since_full % self.refresh == 0 or self._new_batch(x)
        self._since_full = 1 if full else self._since_full + 1
        if full:
            positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)  # (B, L)
            states = self._encode(x, positions, fresh=True)
        else:
            assert self._kept is not None
            active = wanted | (x != self._kept.x)  # (B, L)
            positions = _first_active(active)  # (B, A): the active positions first, then stable ones
            states = self._encode(x, positions, fresh=False)
            self._kept.x = x.clone()
        self.positions_run += positions.numel()
        self.positions_seen += x.numel()
        spread = states.new_zeros((*x.shape, states.shape[-1]))  # (B, L, D)
        spread.scatter_(1, positions[..., None].expand(-1, -1, states.shape[-1]), states)
        return self.head(self.model, at_query(spread, query)).float()  # (N, V)

    def _new_batch(self, x: torch.Tensor) -> bool:
        """Whether `x` cannot continue the kept batch: another shape, or more masks in a row than before."""
        kept = self._kept
        if kept is None or kept.x.shape != x.shape:
            return True
        masks, kept_masks = (x == self.mask_id).sum(1), (kept.x == self.mask_id).sum(1)  # (B,)
        return bool((masks > kept_masks).any())  # a host read: this forward serves the CPU path

    def _encode(self, x: torch.Tensor, positions: torch.Tensor, fresh: bool) -> torch.Tensor:
        """The encoder's last hidden states (B, A, D) at `positions` (B, A); `fresh`: a full pass whose keys
        and values are kept, else one that reads the kept ones and overwrites those of `positions`."""
        bert: Any = self.model.distilbert  # DistilBertModel: its layers are read one by one
        embeddings = bert.embeddings
        tokens = x.gather(1, positions)  # (B, A)
        h = embeddings.LayerNorm(embeddings.word_embeddings(tokens) + embeddings.position_embeddings(positions))
        layers = bert.transformer.layer
        if fresh:
            self._kept = _Kept(x.clone(), [torch.empty(0)] * len(layers), [torch.empty(0)] * len(layers))
        kept = self._kept
        assert kept is not None
        for i, layer in enumerate(layers):
            attention = layer.attention
            heads = attention.n_heads
            q, k, v = (_split(lin(h), heads) for lin in (attention.q_lin, attention.k_lin, attention.v_lin))
            if fresh:
                kept.keys[i], kept.values[i] = k, v  # (B, H, L, d)
            else:
                where = positions[:, None, :, None].expand_as(k)  # (B, H, A, d)
                kept.keys[i].scatter_(2, where, k)
                kept.values[i].scatter_(2, where, v)
            mixed = F.scaled_dot_product_attention(q, kept.keys[i], kept.values[i])  # (B, H, A, d)
            attended = layer.sa_layer_norm(attention.out_lin(mixed.transpose(1, 2).flatten(2)) + h)  # (B, A, D)
            h = layer.output_layer_norm(layer.ffn(attended) + attended)
        return cast(torch.Tensor, h)


def _split(h: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, A, D) -> (B, H, A, D / H)."""
    return h.view(*h.shape[:-1], heads, -1).transpose(1, 2)


def _as_mask(query: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Flat indices (N,) into B * L as a (B, L) bool mask."""
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=query.device)
    return mask.index_fill_(0, query, True).view(shape)


def _first_active(active: torch.Tensor) -> torch.Tensor:
    """(B, A) positions, each row's active ones first, A the most active in any row (the others are
    stable positions run as well, fresh)."""
    count = int(active.sum(1).max())  # a host read: this forward serves the CPU path, where it is free
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)  # (B, L)
    return order[:, : max(count, 1)]
