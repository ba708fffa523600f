"""The masked-diffusion objective: its value against a hand computation, and its t sampling."""

from __future__ import annotations

import math

import torch
from transformers import DistilBertConfig, DistilBertForMaskedLM

from app.diffusion.logits import logits_at_positions
from model_training.objective import diffusion_loss, weighted_masked_nll

MASK = 3


def test_loss_matches_hand_computation() -> None:
    """Two sequences of 3 tokens, vocab 4: recompute masks, CE/t and the mean over all 6 positions."""
    x0 = torch.tensor([[0, 1, 2], [2, 2, 0]])
    logits = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.0, 0.0, 3.0, 1.0], [2.0, 1.0, 0.0, 0.0]])  # (L, V) per row
    seen: list[torch.Tensor] = []

    def logits_fn(x_t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return logits.expand(2, 3, 4)[masked]

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
    x0 = torch.tensor([[1, 2], [3, 4]])
    nll = weighted_masked_nll(torch.randn(0, 5), x0, torch.zeros(2, 2, dtype=torch.bool), torch.tensor([0.5, 0.5]))
    assert nll.tolist() == [0.0, 0.0]


def test_masked_cross_entropy_is_summed_per_sequence() -> None:
    x0 = torch.tensor([[1, 2, 3], [0, 1, 2]])
    masked = torch.tensor([[True, False, True], [False, False, True]])
    logits = torch.randn(3, 5)  # rows: (0, 0), (0, 2), (1, 2)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3, 2]), reduction="none")
    nll = weighted_masked_nll(logits, x0, masked, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(nll, torch.stack([(ce[0] + ce[1]) / 0.5, ce[2] / 0.25]))


def test_head_at_masked_positions_gives_the_full_loss_and_gradients() -> None:
    """Training with the vocabulary head at masked positions only is the same objective, cheaper."""
    config = DistilBertConfig(
        vocab_size=50,
        dim=16,
        n_layers=1,
        n_heads=2,
        hidden_dim=32,
        max_position_embeddings=12,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = DistilBertForMaskedLM(config)
    x0 = torch.randint(5, 50, (3, 12))
    head_rows: list[int] = []
    model.vocab_projector.register_forward_hook(lambda _m, _a, out: head_rows.append(out[..., 0].numel()))
    n_masked: list[int] = []
    results = []
    for head_only in (False, True):
        model.zero_grad()

        def logits_fn(x_t: torch.Tensor, masked: torch.Tensor, head_only: bool = head_only) -> torch.Tensor:
            n_masked.append(int(masked.sum()))
            return logits_at_positions(model, model, x_t, masked, head_only=head_only)

        loss = diffusion_loss(logits_fn, x0, MASK, torch.Generator().manual_seed(1))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for full, head_only in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(full, head_only, rtol=1e-4, atol=1e-6)
    assert head_rows == [36, n_masked[1]] and 0 < n_masked[1] < 36  # every position, then the masked ones
