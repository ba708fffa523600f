"""The masked-diffusion training objective (MDLM / LLaDA), as pure functions of tensors.

For clean tokens x_0 (B, L): draw a masking rate t ~ U(eps, 1) per sequence, mask every position
independently with probability t, and score the model's cross-entropy at the masked positions
weighted by 1/t, averaged over all B*L positions (PAD included). Its expectation is an upper bound
on the negative log-likelihood per position (the ELBO), which is also what evaluation reports.

Logits are asked for at the masked positions only (`app.diffusion.logits.logits_at_positions`):
nothing else enters the loss, and the vocabulary head is skipped everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.diffusion.sampling import LogitsFn as LogitsFn  # (x_t, query) -> logits at the queried positions


def sample_t(
    batch_size: int,
    eps: float,
    generator: torch.Generator,
    low_discrepancy: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B,) masking rates in [eps, 1).

    With `low_discrepancy` (MDLM, Sahoo et al. 2024) one uniform offset is shared and the batch is
    spread evenly over [0, 1): each t is still U(eps, 1), but the batch mean has lower variance.
    """
    u = torch.rand(batch_size if not low_discrepancy else 1, generator=generator, device=device)
    if low_discrepancy:
        u = (u + torch.arange(batch_size, device=device) / batch_size) % 1.0  # (B,)
    return eps + (1 - eps) * u


def mask_tokens(
    x0: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, masked): each position of x0 (B, L) replaced by `mask_id` with probability t (B,)."""
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < t.unsqueeze(1)  # (B, L)
    return x0.masked_fill(masked, mask_id), masked


def weighted_masked_nll(
    masked_logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """(B,) per-sequence sum over masked positions of cross-entropy / t: a bound on -log p(x0) in nats.

    `masked_logits` (N, V) are the logits at the N masked positions of x0 (B, L), in row-major order.
    """
    ce = F.cross_entropy(masked_logits.float(), x0[masked], reduction="none")  # (N,)
    rows = masked.nonzero()[:, 0]  # (N,) the sequence of each masked position
    return torch.zeros(x0.shape[0], device=x0.device).index_add_(0, rows, ce) / t  # (B,)


def diffusion_loss(
    logits_fn: LogitsFn,
    x0: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    low_discrepancy: bool = False,
) -> torch.Tensor:
    """Scalar loss: the 1/t-weighted masked cross-entropy averaged over all B*L positions."""
    t = sample_t(x0.shape[0], eps, generator, low_discrepancy, device=x0.device)  # (B,)
    x_t, masked = mask_tokens(x0, t, mask_id, generator)
    masked_logits = logits_fn(x_t, masked)  # (N, V)
    return weighted_masked_nll(masked_logits, x0, masked, t).sum() / x0.numel()
