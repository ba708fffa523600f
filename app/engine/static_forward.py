"""A forward pass with static shapes, so that a GPU can replay it as a CUDA graph (used by the engine only).

A small model's forward at batch 1 is dozens of short kernels, and on a GPU it is bound by launching
them rather than by arithmetic; replaying them as one CUDA graph removes the launches (unmeasured
here: docs/benchmarks.md names `scripts/gpu_engine_bench.sh` as the run that would measure it).
Graphs need fixed shapes, so every call is padded to a bucket: rows up to the next power of
two, positions up to the next multiple of 64 (padding is hidden by the attention mask; padded rows
attend to one position so that no softmax is empty). The encoder runs through `torch.compile`
(mode "reduce-overhead" records one CUDA graph per bucket, during the server's warm-up); the
vocabulary head then runs eagerly at the queried positions only, as in `logits.py`. On a CPU the
eager path (`logits_at`) is faster: padding would only add work there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from app.diffusion.logits import at_query, attention_bias

log = logging.getLogger(__name__)

WIDTH_MULTIPLE = 64

HEADS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "distilbert": lambda m, h: m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h)))),
    "bert": lambda m, h: m.cls(h),
    "roberta": lambda m, h: m.lm_head(h),
}
"""Per model family, the masked-LM head applied to encoder states (N, D) -> logits (N, V)."""


def bucket_rows(rows: int) -> int:
    """The next power of two at or above `rows`."""
    return 1 << max(rows - 1, 0).bit_length()


def bucket_width(width: int, max_positions: int) -> int:
    """`width` rounded up to a multiple of WIDTH_MULTIPLE, within the model's positions."""
    return min(-(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE, max_positions)


def supports_static_forward(model: PreTrainedModel) -> bool:
    """Whether the model's family has a known head to run apart from its encoder."""
    return model.config.model_type in HEADS


class StaticShapeForward:
    """A `BatchForward` over bucketed shapes, its encoder compiled (CUDA graphs on GPUs) when asked."""

    def __init__(
        self, model: PreTrainedModel, pad_id: int, max_positions: int, compile: bool, backend: str = "inductor"
    ) -> None:
        if not supports_static_forward(model):
            raise ValueError(f"no static forward for model type {model.config.model_type!r}")
        self.model, self.pad_id, self.max_positions = model, pad_id, max_positions
        self.head = HEADS[model.config.model_type]
        encoder = model.base_model
        self.compiled = compile

        def encode(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            bias = attention_bias(model, attention_mask)  # (B, 1, 1, L): no host check of the mask
            hidden: torch.Tensor = encoder(input_ids=x, attention_mask=bias).last_hidden_state
            return hidden  # (B, L, D)

        mode = "reduce-overhead" if backend == "inductor" else None  # CUDA graphs come with inductor
        self._encode = torch.compile(encode, mode=mode, backend=backend, dynamic=False) if compile else encode
        self._eager_encode = encode
        self.eager_shapes: dict[tuple[int, int], str] = {}  # (rows, width) whose compile failed -> why

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,  # (B, W) token ids
        query: torch.Tensor,  # (B, W) bool or (N,) flat indices into B * W (`at_query`)
        attention_mask: torch.Tensor | None = None,  # (B, W) 1 = real position
    ) -> torch.Tensor:
        """Float32 logits (N, V) at the `query` positions, row-major, from one bucketed pass."""
        rows, width = x.shape
        padded_rows, padded_width = bucket_rows(rows), bucket_width(width, self.max_positions)
        x_padded = x.new_full((padded_rows, padded_width), self.pad_id)  # (Bp, Wp)
        x_padded[:rows, :width] = x
        mask = x.new_zeros((padded_rows, padded_width))  # (Bp, Wp)
        mask[:rows, :width] = 1 if attention_mask is None else attention_mask
        mask[rows:, 0] = 1  # padded rows attend to one position: no empty softmax, no NaN
        hidden = self._encoded(x_padded, mask)  # (Bp, Wp, D)
        return self.head(self.model, at_query(hidden[:rows, :width], query)).float()  # (N, V)

    def _encoded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's states (B, W, D): compiled, unless compiling this shape failed once (at warm-up
        or in a request); then eager for this shape only, logged once, and no request fails for it."""
        shape = (x.shape[0], x.shape[1])
        if not self.compiled or shape in self.eager_shapes:
            return self._eager_encode(x, mask)
        try:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]  # outputs consumed
            hidden: torch.Tensor = self._encode(x, mask)
            return hidden
        except Exception as err:  # a compiler or capture failure must not fail the request
            self.eager_shapes[shape] = f"{type(err).__name__}: {err}"
            log.warning("compiling the forward for %d x %d failed (%s); that shape runs eagerly", *shape, err)
            return self._eager_encode(x, mask)

    def warm_up(self, max_rows: int, width: int) -> int:
        """Run every bucket up to `max_rows` rows at `width`, so that compiling and graph capture happen
        now rather than in a client's request; returns the number of buckets."""
        buckets = sorted({bucket_rows(n) for n in range(1, max_rows + 1)}, reverse=True)
        device = next(self.model.parameters()).device
        for rows in buckets:
            x = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
            query = torch.zeros_like(x, dtype=torch.bool)
            query[:, 0] = True
            self(x, query)
        return len(buckets)
