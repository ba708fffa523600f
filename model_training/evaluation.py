"""Validation: the ELBO bound per position and per character, and sample stories from the core samplers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.diffusion.generation import sample
from app.diffusion.logits import logits_at_positions
from app.diffusion.sampler_settings import SamplerSettings
from app.diffusion.text import decode_story
from model_training.objective import mask_tokens, weighted_masked_nll
from model_training.tokenization import encode_batch


@dataclass(frozen=True)
class EvalResult:
    """The validation bound: nats per position (PAD included) and bits per story character."""

    nats_per_token: float
    bits_per_char: float
    num_stories: int


def stratified_t(
    num_samples: int, batch_size: int, eps: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """(K, B) masking rates: sample k of each story in the k-th of K equal strata of [eps, 1)."""
    u = torch.rand(num_samples, batch_size, generator=generator, device=device)
    k = torch.arange(num_samples, device=device).unsqueeze(1)  # (K, 1)
    return eps + (1 - eps) * (k + u) / num_samples  # (K, B)


@torch.no_grad()
def validation_bound(
    model: PreTrainedModel,
    loader: DataLoader,
    accelerator: Accelerator,
    mask_id: int,
    eps: float,
    num_t_samples: int,
    seed: int,
    head_only: bool = True,
) -> EvalResult:
    """Monte-Carlo ELBO over the validation set, with the same t and masks at every evaluation.

    `model` is the prepared (possibly wrapped) model; `head_only` as in `logits_at_positions`.
    """
    bare = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=accelerator.device)
    nats, chars = [], []
    for index, batch in enumerate(loader):
        generator.manual_seed(seed * 1_000_003 + index * 7919 + accelerator.process_index)
        x0 = batch["input_ids"]  # (B, L)
        ts = stratified_t(num_t_samples, x0.shape[0], eps, generator, x0.device)  # (K, B)
        total = torch.zeros(x0.shape[0], device=x0.device)  # (B,)
        for t in ts:
            x_t, masked = mask_tokens(x0, t, mask_id, generator)
            logits = logits_at_positions(model, bare, x_t, masked, head_only=head_only)  # (N, V)
            total += weighted_masked_nll(logits, x0, masked, t)
        seq_nats = torch.stack([total / num_t_samples, x0.new_full((x0.shape[0],), x0.shape[1]).float()], dim=1)
        nats.append(accelerator.gather_for_metrics(seq_nats))  # (B, 2): nats, positions
        chars.append(accelerator.gather_for_metrics(batch["n_chars"].float()))
    model.train(was_training)
    per_seq = torch.cat(nats)
    total_nats = per_seq[:, 0].sum().item()
    return EvalResult(
        nats_per_token=total_nats / per_seq[:, 1].sum().item(),
        bits_per_char=total_nats / math.log(2) / torch.cat(chars).sum().item(),
        num_stories=per_seq.shape[0],
    )


def sample_stories(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_stories: int,
    seq_len: int,
    sampler: SamplerSettings,
    seed: int,
) -> list[str]:
    """Unprompted stories written by the core sampler (`sample`), as the server would; seeds seed, seed+1, ..."""
    if num_stories == 0:
        return []
    was_training = model.training
    model.eval()
    seeds = [seed + i for i in range(num_stories)]
    *_, (_, last) = sample(model, tokenizer, sampler, seeds, seq_len)
    model.train(was_training)
    return [decode_story(row.tolist(), tokenizer) for row in last.x]


@torch.no_grad()
def text_bound(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    seq_len: int,
    num_t_samples: int = 8,
    seed: int = 0,
    eps: float = 1e-3,
    batch_size: int = 16,
) -> EvalResult:
    """The same bound for raw story texts, encoded exactly as training encodes them; no accelerate.

    For held-out checks of a finished checkpoint (a quality gate in the tests) and for scoring
    generated stories under an independent judge model.
    """
    rows = encode_batch({"text": list(texts)}, tokenizer, seq_len)
    device = next(model.parameters()).device
    x_all = torch.tensor(rows["input_ids"], device=device)  # (N, L)
    mask_id = int(tokenizer.mask_token_id)
    generator = torch.Generator(device=device).manual_seed(seed)
    total_nats = 0.0
    for start in range(0, len(x_all), batch_size):
        x0 = x_all[start : start + batch_size]  # (B, L)
        for t in stratified_t(num_t_samples, x0.shape[0], eps, generator, device):  # (B,) each
            x_t, masked = mask_tokens(x0, t, mask_id, generator)
            nll = weighted_masked_nll(logits_at_positions(model, model, x_t, masked), x0, masked, t)  # (B,)
            total_nats += nll.sum().item() / num_t_samples
    return EvalResult(
        nats_per_token=total_nats / x_all.numel(),
        bits_per_char=total_nats / math.log(2) / sum(rows["n_chars"]),
        num_stories=len(texts),
    )
