"""One forward pass for many sequences of different lengths.

Sequences are right-padded to the longest one and the padding is hidden with an attention mask,
rather than grouped into length buckets. With step-level batching, requests of any length join
between any two steps; buckets would split one step into a forward per bucket (smaller batches,
more launches, a step as slow as the sum of its buckets) or hold requests back until a bucket
fills. Padding costs only encoder work on the padded positions, since the vocabulary head runs at
queried positions alone (`logits_at`), and lengths are bounded by the model's few hundred
positions. Masked keys get zero attention weight, so a sequence's logits do not depend on what
else is in the batch beyond floating-point noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

BatchForward = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""(x (B, L), query (B, L) bool, attention_mask (B, L) or None) -> float logits (N, V), row-major."""


def pad_batch(
    xs: Sequence[torch.Tensor], queries: Sequence[torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stack (1, L_i) tokens and queries into (B, L_max); the mask is None when no row is padded."""
    lengths = [x.shape[1] for x in xs]
    width = max(lengths)
    if all(length == width for length in lengths):
        return torch.cat(list(xs)), torch.cat(list(queries)), None
    device = xs[0].device
    x = torch.full((len(xs), width), pad_id, dtype=torch.long, device=device)  # (B, L_max)
    query = torch.zeros((len(xs), width), dtype=torch.bool, device=device)  # (B, L_max)
    attention_mask = torch.zeros((len(xs), width), dtype=torch.long, device=device)  # (B, L_max)
    for row, (xi, qi, length) in enumerate(zip(xs, queries, lengths, strict=True)):
        x[row, :length] = xi[0]
        query[row, :length] = qi[0]
        attention_mask[row, :length] = 1
    return x, query, attention_mask


def batch_logits(
    forward: BatchForward, xs: Sequence[torch.Tensor], queries: Sequence[torch.Tensor], pad_id: int
) -> list[torch.Tensor]:
    """Logits (N_i, V) at each sequence's queried positions, from one forward over all of them.

    Args:
        forward: the model's logits at queried positions (`logits_at` bound to a model).
        xs: (1, L_i) token ids, one per sequence.
        queries: (1, L_i) bool, the positions each sequence needs logits for.
        pad_id: token written into padding (hidden by the attention mask, so any id works).
    """
    x, query, attention_mask = pad_batch(xs, queries, pad_id)
    logits = forward(x, query, attention_mask)  # (N, V), rows in row-major order of `query`
    counts = torch.stack([q.sum() for q in queries]).tolist()  # one device sync for all rows
    return list(torch.split(logits, counts))
