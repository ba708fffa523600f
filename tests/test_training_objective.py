"""The masked-diffusion objective: its value against a hand computation, and its t sampling."""

from __future__ import annotations

import math

import torch

from model_training.evaluation import stratified_t
from model_training.objective import diffusion_loss, mask_tokens, sample_t, weighted_masked_nll

MASK = 3


def test_loss_matches_hand_computation() -> None:
    """Two sequences of 3 tokens, vocab 4: recompute masks, CE/t and the mean over all 6 positions."""
    x0 = torch.tensor([[0, 1, 2], [2, 2, 0]])
    logits = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.0, 0.0, 3.0, 1.0], [2.0, 1.0, 0.0, 0.0]])  # (L, V) per row
    seen: list[torch.Tensor] = []

    def logits_fn(x_t: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return logits.expand(2, 3, 4)

    loss = diffusion_loss(logits_fn, x0, MASK, torch.Generator().manual_seed(7), eps=1e-3)

    g = torch.Generator().manual_seed(7)
    t = 1e-3 + (1 - 1e-3) * torch.rand(2, generator=g)
    masked = torch.rand(2, 3, generator=g) < t[:, None]
    assert torch.equal(seen[0], torch.where(masked, torch.tensor(MASK), x0))
    expected = 0.0
    for b in range(2):
        for i in range(3):
            if masked[b, i]:
                log_z = math.log(sum(math.exp(v) for v in logits[i].tolist()))
                expected += (log_z - logits[i, x0[b, i]].item()) / t[b].item()
    assert masked.any()
    assert math.isclose(loss.item(), expected / 6, rel_tol=1e-5)


def test_unmasked_positions_do_not_count() -> None:
    x0 = torch.tensor([[1, 2]])
    logits = torch.randn(1, 2, 5)
    nll = weighted_masked_nll(logits, x0, torch.tensor([[False, False]]), torch.tensor([0.5]))
    assert nll.item() == 0.0


def test_mask_rate_follows_t() -> None:
    x0 = torch.zeros(4, 10_000, dtype=torch.long)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_t, masked = mask_tokens(x0, t, MASK, torch.Generator().manual_seed(0))
    assert torch.allclose(masked.float().mean(dim=1), t, atol=0.02)
    assert torch.equal(x_t == MASK, masked)


def test_low_discrepancy_t_covers_the_interval_evenly() -> None:
    t = sample_t(8, 1e-3, torch.Generator().manual_seed(0), low_discrepancy=True)
    assert ((t >= 1e-3) & (t < 1)).all()
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().long().sort().values
    assert torch.equal(strata, torch.arange(8))  # one t in each eighth of [eps, 1)


def test_sample_t_is_seeded_and_in_range() -> None:
    a = sample_t(1000, 0.01, torch.Generator().manual_seed(3))
    b = sample_t(1000, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0.01 and a.max() < 1


def test_eval_t_is_stratified() -> None:
    ts = stratified_t(4, 3, 1e-3, torch.Generator().manual_seed(0), torch.device("cpu"))  # (K, B)
    for k in range(4):
        assert ((ts[k] >= 1e-3 + (1 - 1e-3) * k / 4) & (ts[k] < 1e-3 + (1 - 1e-3) * (k + 1) / 4)).all()
